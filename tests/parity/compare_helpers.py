"""Running `reranker compare` as a user would, for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "sample" / "rerank_sample.jsonl"


def run_compare(out: Path, a: str, b: str, *extra: str) -> tuple[int, dict, str]:
    """Exit status, report.json (or {}) and the output of one compare run."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reranker.cli",
            "compare",
            "--a",
            a,
            "--b",
            b,
            "--data",
            str(DATA),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, RERANK_COMPARE_QUIET="1"),
    )
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return proc.returncode, report, proc.stdout + proc.stderr
