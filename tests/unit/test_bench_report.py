"""The benchmark report's goal checks read one run's records correctly."""

from __future__ import annotations

from reranker.bench_report import goals, table


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


def test_goals_use_each_backends_best_row_against_the_same_runs_baselines():
    text = goals(RECORDS)
    assert "| qwen3_vllm >= raw LLM.generate | 550.0 vs 500.0 | yes |" in text
    assert "| qwen3_vllm_score >= raw LLM.generate | 450.0 vs 500.0 | no |" in text
    assert "| qwen3_transformers >= 3x model card | 390.0 vs 360.0 | yes |" in text
    assert "| qwen3_transformers >= 0.8x raw LLM.generate | 390.0 vs 400.0 | no |" in text
    assert "| best backend >= 1,100 pairs/s | 550.0 vs 1100.0 | no |" in text


def test_missing_baseline_is_reported_not_guessed():
    text = goals([record("qwen3_transformers", 300.0)])
    assert "| qwen3_transformers >= 3x model card | not measured in this run | - |" in text


def test_table_has_a_row_per_record_with_peak_share():
    rows = table(RECORDS).splitlines()
    assert len(rows) == 2 + len(RECORDS)
    # 200,000 tokens/s x 0.88 GFLOP per token / 799 TFLOP/s = 22.0 % of peak
    assert "| qwen3_vllm | 400.0 | 200,000 | 22.0 |" in rows[2]
