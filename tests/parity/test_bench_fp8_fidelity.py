"""scripts/bench_fp8_fidelity.py scores one workload with and without fp8 (the CPU's
fp8 matmul) on the tiny model and reports how far the scores moved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench_fp8_fidelity.py"


def test_reports_spearman_and_largest_probability_change(tiny_model_dir, tmp_path):
    out = tmp_path / "fp8.jsonl"
    args = ["--model", str(tiny_model_dir), "--queries", "2", "--docs", "6"]
    args += ["--max-words", "60", "--option", "max_model_len=512"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json-out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| Spearman mean | Spearman min |" in run.stdout
    (record,) = (json.loads(line) for line in out.read_text().splitlines())
    assert record["bench"] == "fp8_fidelity" and record["pairs"] == 12
    assert record["runs"]["none"]["dtype"] == record["runs"]["fp8"]["dtype"] == "float32"
    assert -1 <= record["spearman_min"] <= record["spearman_mean"] <= 1
    assert record["spearman_mean"] > 0.5  # fp8 moves scores, it does not scramble them
    assert 0 < record["max_abs_dp"] < 1 and record["mean_abs_dp"] <= record["max_abs_dp"]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == record


def test_a_setting_that_cannot_run_is_one_error_line(tiny_model_dir):
    """CUDA graphs on the CPU: refused at startup, before any scoring; exit 2, no traceback."""
    args = ["--model", str(tiny_model_dir), "--queries", "1", "--docs", "2"]
    args += ["--option", "cuda_graphs=true"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: quantization fp8: ")
