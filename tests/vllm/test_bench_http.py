"""scripts/bench_http.py as a user runs it, on vLLM's CPU build with the tiny model: this
service (qwen3_transformers, started through scripts/start_reranker.sh) and then
`vllm serve` with the Qwen3-Reranker overrides get the same requests; both answer every
one with 200, bill the same prompt tokens per level, and give the same scores to the
check request (float32 on both: within 1e-3).

Two server starts (about 15 s and 60-80 s on a 2-core CPU) and a few small requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def test_both_servers_answer_the_same_requests_with_the_same_scores(tmp_path, tiny_model_dir):
    if not VENV.name.startswith(".venv-reranker-"):
        pytest.skip("run from the .venv-reranker-qwen3_vllm venv (scripts/test.sh does)")
    if not (VENV.parent / ".venv-reranker-qwen3_transformers/bin/python").exists():
        pytest.skip("the service's venv .venv-reranker-qwen3_transformers is missing")
    out = tmp_path / "bench-http.json"
    command = [
        sys.executable,
        "scripts/bench_http.py",
        "--model",
        str(tiny_model_dir),
        "--clients",
        "1,4",
        "--docs",
        "10",
        "--requests",
        "4",
        "--warmup",
        "1",
        "--min-words",
        "20",
        "--max-words",
        "300",
        "--max-model-len",
        "512",
        "--dtype",
        "float32",
        "--check-scores",
        "--vllm-python",
        sys.executable,
        "--start-timeout",
        "300",
        "--out",
        str(out),
    ]
    env = dict(
        os.environ,
        RERANK_VENV_ROOT=str(VENV.parent),
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    )
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())

    servers = result["servers"]
    assert set(servers) == {"ours", "vllm"}
    for name, server in servers.items():
        assert server["status"] == "ok", (name, server.get("error"), server.get("log_tail"))
        assert [(lv["clients"], lv["docs"]) for lv in server["levels"]] == [(1, 10), (4, 10)]
        for level in server["levels"]:
            assert level["ok"] == level["requests_sent"] == 4, (name, level)
            assert level["failed"] == 0 and level["requests_unsent"] == 0, (name, level)
            assert level["pairs_per_s"] > 0 and level["p50_ms"] > 0
        assert server["stop"]["exit_code"] == 0 and not server["stop"]["killed"], server["stop"]
    assert "--runner pooling" in servers["vllm"]["command"]
    assert "is_original_qwen3_reranker" in servers["vllm"]["command"]

    # The same tokens: identical prompt tokens billed per level, and the check request's
    # scores equal within float32 noise.
    ours, vllm = (servers[n]["levels"] for n in ("ours", "vllm"))
    assert [lv["tokens_per_pair"] for lv in ours] == [lv["tokens_per_pair"] for lv in vllm]
    check = result["score_check"]
    assert check["passed"] and check["same_tokens"], check
    assert check["documents"] == 16 and check["max_abs_diff"] <= 1e-3

    rows = result["comparison"]
    assert len(rows) == 2 and all(row["pairs_per_s"]["ratio"] for row in rows)
    assert "| clients | docs | pairs/s ours | pairs/s vllm serve |" in done.stdout
    assert "score check: 16 documents" in done.stdout and "passed" in done.stdout
