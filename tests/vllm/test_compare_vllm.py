"""`reranker compare` of the transformers and the vLLM backends on the tiny model."""

from __future__ import annotations

from compare_helpers import run_compare


def test_transformers_and_vllm_rank_alike(tmp_path, tiny_model_dir):
    common = f"model_name={tiny_model_dir},max_model_len=1024"
    vllm = f'qwen3_vllm:{common},dtype="float32",gpu_memory_utilization=0.3,enforce_eager=true'
    code, report, out = run_compare(
        tmp_path / "report",
        f"qwen3_transformers:{common}",
        vllm,
        "--min-spearman",
        "0.999",
        "--max-ndcg-drop",
        "0.001",
    )
    assert code == 0, out
    assert all(q["spearman"] >= 0.999 for q in report["per_query"])
    assert report["overall"]["max_abs_diff"] <= 1e-4
