"""`reranker compare` of the transformers and the vLLM backends on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("vllm_backend", ["qwen3_vllm"])
def test_transformers_and_vllm_rank_alike(tmp_path, tiny_model_dir, vllm_backend):
    common = f"model_name={tiny_model_dir},max_model_len=1024"
    b_spec = (
        f'{vllm_backend}:{common},dtype="float32",gpu_memory_utilization=0.3,enforce_eager=true'
    )
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reranker.cli",
            "compare",
            "--a",
            f"qwen3_transformers:{common}",
            "--b",
            b_spec,
            "--data",
            str(REPO / "data/sample/rerank_sample.jsonl"),
            "--out",
            str(out),
            "--no-progress",
            "--min-spearman",
            "0.999",
            "--max-ndcg-drop",
            "0.001",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, RERANK_COMPARE_QUIET="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert all(q["spearman"] >= 0.999 for q in report["per_query"])
    assert report["overall"]["max_abs_diff"] <= 1e-4
