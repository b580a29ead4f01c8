"""The benchmark report reads one run's records correctly."""

from __future__ import annotations

from reranker.bench.report import against_baselines, table


def record(backend: str, pairs_per_s: float, **extra):
    return {"backend": backend, "pairs_per_s": pairs_per_s, "device": "NVIDIA H200", **extra}


RECORDS = [
    record("qwen3_vllm", 400.0, tokens_per_s=200_000, mean_tokens_per_pair=500),
    record("qwen3_vllm (queries coalesced)", 550.0, tokens_per_s=275_000),
    record("baseline:qwen3_vllm", 500.0, baseline="raw generate"),
    record("qwen3_vllm_score", 450.0),
    record("qwen3_transformers (queries coalesced)", 390.0),
    record("baseline:qwen3_transformers", 120.0, baseline="model card"),
]


def test_each_backends_best_row_against_the_same_runs_baselines():
    rows = against_baselines(RECORDS).splitlines()
    assert rows[0] == "| backend | best pairs/s | x raw LLM.generate | x model card recipe |"
    assert "| qwen3_vllm | 550.0 | 1.10 | 4.58 |" in rows
    assert "| qwen3_vllm_score | 450.0 | 0.90 | 3.75 |" in rows
    assert "| qwen3_transformers | 390.0 | 0.78 | 3.25 |" in rows
    assert len(rows) == 2 + 3


def test_missing_baseline_is_reported_not_guessed():
    assert against_baselines([record("qwen3_transformers", 300.0)]) == (
        "no raw baseline in this run"
    )


def test_table_has_a_row_per_record_with_peak_share():
    rows = table(RECORDS).splitlines()
    assert len(rows) == 2 + len(RECORDS)
    # 200,000 tokens/s x 0.88 GFLOP per token / 799 TFLOP/s = 22.0 % of peak
    assert "| qwen3_vllm | 400.0 | 200,000 | 22.0 |" in rows[2]


def test_cross_encoder_runs_against_their_baselines_without_a_qwen3_peak_share():
    records = [
        record("cross_encoder_vllm", 900.0, tokens_per_s=300_000, mean_tokens_per_pair=330),
        record("baseline:cross_encoder_vllm", 600.0, baseline="raw LLM.score"),
        record("cross_encoder_transformers", 450.0, tokens_per_s=150_000),
        record("baseline:cross_encoder_transformers", 300.0, baseline="CrossEncoder.predict"),
    ]
    rows = against_baselines(records).splitlines()
    assert rows[0] == (
        "| backend | best pairs/s | x raw LLM.score (text pairs) | x CrossEncoder.predict |"
    )
    assert "| cross_encoder_vllm | 900.0 | 1.50 | 3.00 |" in rows
    assert "| cross_encoder_transformers | 450.0 | 0.75 | 1.50 |" in rows
    assert "| cross_encoder_vllm | 900.0 | 300,000 | - |" in table(records).splitlines()[2]


def test_fp8_and_bf16_runs_of_one_backend_are_rows_of_their_own():
    records = [
        record("qwen3_transformers", 175.0, quantization="none"),
        record("qwen3_transformers (queries coalesced)", 174.0, quantization="none"),
        record("qwen3_transformers", 227.0, quantization="fp8"),
        record("qwen3_transformers (queries coalesced)", 233.0, quantization="fp8"),
        record("baseline:qwen3_transformers", 50.0, baseline="model card"),
    ]
    rows = table(records).splitlines()
    assert rows[4].startswith("| qwen3_transformers [fp8] | 227.0 |")
    assert rows[5].startswith("| qwen3_transformers (queries coalesced) [fp8] | 233.0 |")
    assert rows[2].startswith("| qwen3_transformers | 175.0 |")
    best = against_baselines(records).splitlines()
    assert "| qwen3_transformers | 175.0 | 3.50 |" in best
    assert "| qwen3_transformers [fp8] | 233.0 | 4.66 |" in best
