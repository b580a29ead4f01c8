"""`reranker bench` end to end on the tiny model: every record, the baseline included, for
both batch layouts (the model card's baseline must not run through the packed model)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.cli import main  # noqa: E402


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_bench_writes_backend_coalesced_and_baseline_records(tiny_model_dir, tmp_path, layout):
    out = tmp_path / "bench.jsonl"
    code = main(
        [
            "bench",
            "--backend",
            "qwen3_transformers",
            "--model",
            str(tiny_model_dir),
            "--queries",
            "2",
            "--docs",
            "6",
            "--max-words",
            "60",
            "--repeat",
            "2",
            "--coalesce",
            "--baseline",
            "--option",
            f"batch_layout={layout}",
            "--json-out",
            str(out),
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["backend"] for r in records] == [
        "qwen3_transformers",
        "qwen3_transformers (queries coalesced)",
        "baseline:qwen3_transformers",
    ]
    assert records[0]["batch_layout"] == layout
    assert all(r["pairs"] == 12 and r["pairs_per_s"] > 0 for r in records)
    assert records[0]["tokens"] > 12 * 20 and records[0]["startup_s"] >= 0
