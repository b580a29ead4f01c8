"""The README's A/B command, run as written from the transformers venv on the shipped
config (only the model pointed at the offline one): every backend gives the same scores,
and the report names each side's device and dtype."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRANSFORMERS_VENV = REPO / ".venv-reranker-qwen3_transformers"


def readme_compare_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    block = next(b for b in blocks if "reranker compare --a" in b)
    return shlex.split(block.replace("\\\n", " "))


def run_readme_compare(out: Path, tiny_model_dir: Path, *extra: str) -> tuple[int, dict, str]:
    if not (TRANSFORMERS_VENV / "bin" / "reranker").exists():
        pytest.skip("needs .venv-reranker-qwen3_transformers (scripts/test.sh makes it)")
    command = readme_compare_command()
    assert command[0] == "reranker"
    proc = subprocess.run(
        [str(TRANSFORMERS_VENV / "bin" / "reranker"), *command[1:], "--out", str(out),
         "--no-progress", *extra],
        cwd=REPO,
        env=dict(os.environ, RERANK_MODEL=str(tiny_model_dir), RERANK_COMPARE_QUIET="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return proc.returncode, report, proc.stdout + proc.stderr


def assert_same_scores_on_cpu_float32(report: dict, b_backend: str) -> None:
    assert report["overall"]["max_abs_diff"] <= 1e-4
    assert report["overall"]["min_spearman"] >= 0.999
    for side, backend in (("a", "qwen3_transformers"), ("b", b_backend)):
        assert report[side]["backend"] == backend
        assert report[side]["device"] == "cpu" and report[side]["dtype"] == "float32"


def test_readme_ab_command_on_the_shipped_config(tmp_path, tiny_model_dir):
    code, report, out = run_readme_compare(tmp_path / "report", tiny_model_dir)
    assert code == 0, out
    assert report["queries"] == 30
    assert_same_scores_on_cpu_float32(report, "qwen3_vllm")
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("device cpu, dtype float32") == 2


def test_readme_ab_command_against_the_score_backend(tmp_path, tiny_model_dir):
    code, report, out = run_readme_compare(
        tmp_path / "report", tiny_model_dir, "--b", "qwen3_vllm_score", "--limit", "8"
    )
    assert code == 0, out
    assert_same_scores_on_cpu_float32(report, "qwen3_vllm_score")
