"""`reranker bench --model-shapes` end to end on the tiny shape: the model is built once
into the root, benched in a process of its own, and its records carry the shape and the
peak memory."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.bench import sizes  # noqa: E402
from reranker.cli import main  # noqa: E402


def test_bench_builds_then_benches_each_shape(tmp_path, capfd, monkeypatch):
    out = tmp_path / "bench.jsonl"
    out.write_text(json.dumps({"backend": "earlier run", "pairs_per_s": 1.0}) + "\n")
    root = tmp_path / "models"
    code = main(
        ["bench", "--model-shapes", "tiny", "--model-dir-root", str(root)]
        + ["--backend", "qwen3_transformers", "--queries", "1", "--docs", "4"]
        + ["--min-words", "10", "--max-words", "40", "--repeat", "1", "--coalesce"]
        + ["--json-out", str(out)]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["backend"] == "earlier run"  # appended, not overwritten
    assert [(r["shape"], r["backend"]) for r in records[1:]] == [
        ("tiny", "qwen3_transformers"),
        ("tiny", "qwen3_transformers (queries coalesced)"),
    ]
    assert all(r["pairs"] == 4 and r["peak_host_mem_gib"] > 0 for r in records[1:])
    assert records[1]["model"] == str(root / "tiny")
    printed = capfd.readouterr().out
    assert "### tiny" in printed and "peak host RSS (GiB)" in printed
    assert sizes.model_is_built(root / "tiny", "tiny")
    monkeypatch.setattr(sizes.subprocess, "run", lambda *a, **k: pytest.fail("built again"))
    assert sizes.ensure_model(root, "tiny") == root / "tiny"
