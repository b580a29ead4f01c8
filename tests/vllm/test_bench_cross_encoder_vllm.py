"""``reranker bench --baseline`` on ``cross_encoder_vllm``: the backend and raw vLLM
``LLM.score`` on the same texts (documents longer than the pair limit included), on a tiny
BERT cross-encoder and a tiny Qwen3-Reranker sequence classifier, on the CPU engine
(a 600-token document is cut to the 512-token pair limit on both)."""

from __future__ import annotations

import json

import pytest

from reranker.cli import main

CPU = ["dtype=float32", "enforce_eager=true", "gpu_memory_utilization=0.3", "max_model_len=512"]


@pytest.mark.parametrize("family", ["bert", "qwen3-seq-cls"])
def test_bench_times_raw_llm_score(tiny_model_dir, tmp_path, family):
    from reranker.testing import tiny_cross_encoders as tce
    from reranker.testing.tiny_qwen3_seq_cls import convert

    if family == "qwen3-seq-cls":
        model = convert(tiny_model_dir, tmp_path / family)
    elif tce.tokenizer_source_available(family):
        model = tce.build_model(tmp_path / family, family)
    else:
        pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} (the {family} tokenizer) is missing")
    out = tmp_path / "bench.jsonl"
    options = [arg for option in CPU for arg in ("--option", option)]
    sizes = ["--queries", "2", "--docs", "5", "--min-words", "20", "--max-words", "1200"]
    code = main(
        ["bench", "--backend", "cross_encoder_vllm", "--model", str(model), *sizes, *options]
        + ["--repeat", "1", "--baseline", "--json-out", str(out)]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["backend"] for r in records] == ["cross_encoder_vllm", "baseline:cross_encoder_vllm"]
    assert "LLM.score" in records[1]["baseline"] and records[0]["family"] == family
    assert all(r["pairs"] == 10 and r["pairs_per_s"] > 0 for r in records)
