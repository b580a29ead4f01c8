"""``quantization: fp8`` on CUDA (compute capability 8.9+: Ada, Hopper): the fp8 matmul
on the GPU (cuBLAS through ``torch._scaled_mm``) against the one it emulates, and the
default CUDA path (packed batches, fused kernels, compiled layers, CUDA graphs where
FlashAttention-3 runs) with fp8 ranking documents as bfloat16 does; older GPUs refuse it
at startup."""

from __future__ import annotations

import pytest
from pairs import DOCS, MAX_MODEL_LEN, QUERIES

from reranker.compare.metrics import agreement
from reranker.core.errors import ConfigError
from reranker.core.registry import load_backend


def has_fp8_tensor_cores() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


needs_fp8 = pytest.mark.skipif(
    "not has_fp8_tensor_cores()", reason="fp8 matmuls need compute capability 8.9+"
)


def make(model_dir, **options):
    options = {"model_name": str(model_dir), "max_model_len": MAX_MODEL_LEN, **options}
    return load_backend("qwen3_transformers", options)


@needs_fp8
@pytest.mark.parametrize("fast_accum", [False, True])
def test_fp8_linear_on_cuda_computes_its_dequantised_operands(fast_accum):
    import torch

    from reranker.backends.transformers import fp8

    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 3072, bias=False).cuda().bfloat16()
    x = torch.randn(37, 1024, device="cuda", dtype=torch.bfloat16)
    quantized = fp8.FP8Linear.from_linear(layer, fast_accum)
    got = quantized(x)
    q, scale = fp8.quantize_rows(x)
    want = (q.float() * scale) @ quantized.dequantized_weight().t()
    assert got.dtype == torch.bfloat16
    if fast_accum:  # the tensor cores' running sums: within ~1e-2 of the largest value
        assert (got.float() - want).abs().max() <= 0.02 * want.abs().max()
        if torch.cuda.get_device_capability() >= (9, 0):  # Hopper sums differently
            float32_sums = fp8.FP8Linear.from_linear(layer, fast_accum=False)(x)
            assert not torch.equal(got, float32_sums)
    else:
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)
    error = (got.float() - layer(x).float()).norm() / layer(x).float().norm()
    assert error < 0.06


@needs_fp8
def test_fp8_on_the_default_cuda_path_ranks_as_bfloat16(tiny_model_dir):
    bf16 = make(tiny_model_dir)
    quantized = make(tiny_model_dir, quantization="fp8")
    try:
        _, meta = quantized.score_with_meta(QUERIES[0], DOCS)
        assert meta["quantization"] == "fp8" and meta["dtype"] == "bfloat16"
        # fused_swiglu: auto under fp8 puts in the one-pass gating + quantisation kernel
        assert meta["compiled"] and meta["fused_swiglu"]
        assert meta["swiglu_kernel"] == "fp8_gating"
        # and the norms in front of the fp8 matmuls quantise in their own kernel
        assert meta["fp8_fused_norms"] is True
        spearman = [
            agreement(bf16.score(q, DOCS), quantized.score(q, DOCS))["spearman"] for q in QUERIES
        ]
        # the random tiny model: 0.93..1.00 per query on the CPU's fp8 matmul
        assert min(spearman) >= 0.85 and sum(spearman) / len(spearman) >= 0.9
    finally:
        bf16.close()
        quantized.close()


def test_fp8_on_a_gpu_without_fp8_tensor_cores_is_a_startup_error(tiny_model_dir):
    if has_fp8_tensor_cores():
        pytest.skip("this GPU has fp8 tensor cores")
    with pytest.raises(ConfigError, match="compute capability 8.9 or newer"):
        make(tiny_model_dir, quantization="fp8")
