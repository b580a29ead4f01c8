"""scripts/bench_long_docs.py runs both modes on the tiny model and reports them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench_long_docs.py"


def test_chunk_and_whole_modes_score_the_same_requests(tiny_model_dir, tmp_path):
    out = tmp_path / "long.jsonl"
    args = ["--model", str(tiny_model_dir), "--requests", "1", "--docs", "2"]
    args += ["--min-tokens", "1500", "--max-tokens", "1800", "--chunk-tokens", "256"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json-out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| chunk | 4096 |" in run.stdout
    chunk, whole = (json.loads(line) for line in out.read_text().splitlines())
    assert (chunk["mode"], whole["mode"]) == ("chunk", "whole")
    assert chunk["docs"] == whole["docs"] == 2 and whole["prompts"] == 2
    assert chunk["prompts"] > 2 * 5  # 1,500+ tokens in chunks of 256 (overlap 32)
    assert chunk["truncated_prompts"] == whole["truncated_prompts"] == 0
    assert whole["max_model_len"] == 1800 + 1024
