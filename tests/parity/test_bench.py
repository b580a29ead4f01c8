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


@pytest.mark.parametrize("family", ["bert", "qwen3-seq-cls"])
def test_cross_encoder_bench_times_sentence_transformers(tiny_model_dir, tmp_path, family):
    pytest.importorskip("sentence_transformers")
    from reranker.testing import tiny_cross_encoders as tce
    from reranker.testing.tiny_qwen3_seq_cls import convert

    if family == "qwen3-seq-cls":
        model = convert(tiny_model_dir, tmp_path / family)
    elif tce.tokenizer_source_available(family):
        model = tce.build_model(tmp_path / family, family)
    else:
        pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} (the {family} tokenizer) is missing")
    out = tmp_path / "bench.jsonl"
    sizes = ["--queries", "2", "--docs", "5", "--min-words", "20", "--max-words", "1200"]
    code = main(
        ["bench", "--backend", "cross_encoder_transformers", "--model", str(model), *sizes]
        + ["--repeat", "1", "--baseline", "--json-out", str(out)]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["backend"] for r in records] == [
        "cross_encoder_transformers",
        "baseline:cross_encoder_transformers",
    ]
    assert "CrossEncoder.predict" in records[1]["baseline"]
    assert records[0]["family"] == family
    assert all(r["pairs"] == 10 and r["pairs_per_s"] > 0 for r in records)


def test_a_missing_baseline_library_stops_before_loading(monkeypatch, capsys):
    from reranker.bench import baselines

    monkeypatch.setitem(baselines.BASELINE_MODULES, "qwen3_transformers", ("no_such_module",))
    monkeypatch.setattr(
        "reranker.core.registry.load_backend",
        lambda *a, **k: pytest.fail("loaded before checking the baseline"),
    )
    code = main(["bench", "--backend", "qwen3_transformers", "--baseline", "--queries", "1"])
    assert code == 2
    assert "pip install no-such-module" in capsys.readouterr().err
