"""`reranker compare` end to end: backends in worker subprocesses, reports, exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
from compare_helpers import run_compare

pytest.importorskip("ranx")


def compare(tmp_path: Path, a: str, b: str, *extra: str) -> tuple[int, dict, str]:
    return run_compare(tmp_path / "report", a, b, "--limit", "6", *extra)


def spec(model: Path, **extra: str) -> str:
    opts = {"model_name": str(model), "max_model_len": "1024", **extra}
    return "qwen3_transformers:" + ",".join(f"{k}={v}" for k, v in opts.items())


def test_backend_against_itself_agrees_perfectly(tmp_path, tiny_model_dir):
    code, report, out = compare(
        tmp_path,
        spec(tiny_model_dir),
        spec(tiny_model_dir),
        "--min-spearman",
        "0.999",
        "--max-ndcg-drop",
        "0.0",
    )
    assert code == 0, out
    o = report["overall"]
    assert o["spearman"] == 1.0 and o["min_spearman"] == 1.0 and o["top10_overlap"] == 1.0
    assert o["max_abs_diff"] == 0.0
    q = report["quality"]["mean"]["ndcg@10"]
    assert q["a"] == q["b"]
    assert report["speed"]["a"]["pairs_per_s"] > 0 and report["speed"]["a"]["p95_ms"] > 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.startswith("# Reranker comparison")
    png = (tmp_path / "report" / "scatter.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the same backend twice ranks every query alike: nothing to list as a disagreement
    assert report["disagreements"] == [] and "rank every query alike" in md
    assert report["a"]["device"] == "cpu" and report["b"]["dtype"] == "float32"


def test_thresholds_make_the_exit_status_non_zero(tmp_path, tiny_model_dir):
    code, report, out = compare(
        tmp_path,
        spec(tiny_model_dir),
        spec(tiny_model_dir, instruction_format='"compact"'),
        "--min-spearman",
        "0.999",
    )
    assert code == 1, out
    assert report["overall"]["spearman"] < 0.999
    assert "threshold failed: mean spearman" in out
    assert all(w["spearman"] < 1.0 for w in report["disagreements"])
    assert 0 < len(report["disagreements"]) <= 5


def test_unknown_backend_is_a_clear_error(tmp_path):
    code, _, out = compare(tmp_path, "no_such_backend", "no_such_backend")
    assert code == 2 and "unknown reranker backend" in out and "Traceback" not in out
