"""scripts/bench_vllm_overhead.py as a user runs it, on vLLM's CPU build with the tiny
model and tiny numbers: raw LLM.generate and qwen3_vllm on the same engine and prompts,
both forms timed, a ratio each, one JSON line with the streaming settings (one engine
start, ~60 s on a 2-core CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_prints_both_rates_and_the_ratio(tmp_path, tiny_model_dir):
    out = tmp_path / "overhead.jsonl"
    command = [
        sys.executable, "scripts/bench_vllm_overhead.py",
        "--model", str(tiny_model_dir),
        "--queries", "2", "--docs", "5", "--min-words", "10", "--max-words", "40",
        "--repeat", "1", "--max-model-len", "512",
        "--backend-option", "gpu_memory_utilization=0.3", "--stream-head-docs", "2",
        "--json-out", str(out),
    ]  # fmt: skip
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    )
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert record["pairs"] == 10
    rates = record["pairs_per_s"]
    assert set(rates) == {"raw_per_query", "raw_one_call", "ours_per_query", "ours_one_call"}
    assert all(rate > 0 for rate in rates.values())
    assert record["ratio_one_call"] > 0 and record["ratio_per_query"] > 0
    assert (record["streamed"], record["stream_docs"], record["stream_head_docs"]) == (True, 32, 2)
    assert record["backend"]["logprob_method"] in ("logprob_token_ids", "allowed_token_ids")
    assert "per_query" in done.stdout and "one_call" in done.stdout
