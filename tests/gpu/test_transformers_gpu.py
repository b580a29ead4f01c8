"""qwen3_transformers on CUDA: the varlen kernel, fused RMSNorm and compiled layers that
CUDA gets by default change no score beyond float rounding."""

from __future__ import annotations

import pytest
from pairs import DOCS, MAX_MODEL_LEN, QUERIES
from parity_check import assert_matches_reference

from reranker.registry import load_backend


def make(model_dir, **options):
    return load_backend(
        "qwen3_transformers",
        {"model_name": str(model_dir), "max_model_len": MAX_MODEL_LEN, **options},
    )


@pytest.fixture(scope="module")
def cuda_default_fp32(tiny_model_dir):
    """The CUDA defaults (packed, varlen kernel, fused RMSNorm, compiled) in float32."""
    b = make(tiny_model_dir, dtype="float32")
    yield b
    b.close()


def test_cuda_defaults_are_packed_fused_and_compiled(cuda_default_fp32):
    _, meta = cuda_default_fp32.score_with_meta(QUERIES[0], DOCS)
    assert meta["device"].startswith("cuda")
    assert (meta["batch_layout"], meta["fused_rms_norm"], meta["compiled"]) == (
        "packed",
        True,
        True,
    )


def test_cuda_defaults_match_model_card_recipe_fp32(cuda_default_fp32, reference):
    assert assert_matches_reference(cuda_default_fp32, reference) >= 50


def test_packed_matches_padded_in_bfloat16(tiny_model_dir):
    """In bfloat16 the kernels round differently; the scores stay close."""
    fast = make(tiny_model_dir, dtype="bfloat16")
    plain = make(
        tiny_model_dir,
        dtype="bfloat16",
        batch_layout="padded",
        fused_rms_norm=False,
        torch_compile=False,
    )
    try:
        for query in QUERIES:
            a = fast.score(query, DOCS)
            b = plain.score(query, DOCS)
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.02
    finally:
        fast.close()
        plain.close()
