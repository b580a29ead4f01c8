"""The fp8 SiLU-gated MLP kernel (``fp8_swiglu``) against its torch reference, and the
fp8 model with it against the fp8 model without it. Without a GPU the kernel runs in
Triton's interpreter (``TRITON_INTERPRET=1``, set by this folder's conftest): the same
kernel source, fp8 operands, executed on the CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("triton")

from pairs import DOCS, QUERIES  # noqa: E402

from reranker.backends.transformers import fp8  # noqa: E402
from reranker.backends.transformers.kernels import fp8_swiglu  # noqa: E402
from reranker.compare.metrics import agreement  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT_DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def quantized(rows: int, columns: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, columns, generator=g) / columns**0.5
    x = x * torch.logspace(0, spread, rows)[:, None]  # rows of different magnitudes
    return fp8.quantize_rows(x.to(DEVICE))


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize(
    "rows, hidden, intermediate",
    # whole tiles; partial row and column tiles; a depth no multiple of a tile's; one
    # row (the last layer reads few rows); no rows at all; several tiles of every
    # dimension on a GPU (128-wide tiles: the persistent walk, float32 sums per block)
    [(64, 64, 64), (70, 96, 80), (33, 48, 112), (1, 64, 64), (0, 64, 64), (300, 400, 272)],
)
def test_kernel_matches_its_reference(out_dtype, rows, hidden, intermediate):
    op = fp8_swiglu.fused_op()
    assert op is not None
    x, sx = quantized(rows, hidden, 1, spread=1.0)
    gate, sg = quantized(intermediate, hidden, 2)
    up, su = quantized(intermediate, hidden, 3)
    sg, su = sg.t().contiguous(), su.t().contiguous()  # (1, intermediate), as FP8Linear
    got = op(x, sx, gate, sg, up, su, out_dtype)
    want = fp8_swiglu.reference(x, sx, gate, sg, up, su, out_dtype)
    assert got.shape == (rows, intermediate) and got.dtype == out_dtype
    if DEVICE == "cuda":
        # Hopper's fp8 tensor cores add within a 128-deep block in less than float32
        # precision (cuBLAS's fp8 matmul alike): ~1e-3 of the largest value
        scale = float(want.abs().max()) if rows else 1.0
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-2 * scale)
    else:
        # the interpreter: the kernel scales the sums, the reference sums scaled products
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-4)


def test_kernel_reads_gate_and_up_as_row_blocks_of_the_merged_weight():
    """What the model passes: views of one merged FP8Linear, not copies."""
    op = fp8_swiglu.fused_op()
    torch.manual_seed(0)
    gate_l, up_l = (torch.nn.Linear(64, 96, bias=False).to(DEVICE) for _ in range(2))
    merged = fp8.FP8Linear.merged([gate_l, up_l])
    gate, up = merged.split([96, 96])
    x, sx = quantized(40, 64, 4)
    got = op(x, sx, gate.weight_t.t(), gate.scale, up.weight_t.t(), up.scale, torch.float32)
    g, u = (merged(x.float() * sx).float()).chunk(2, dim=-1)
    want = torch.nn.functional.silu(g) * u
    if DEVICE == "cuda":  # both matmuls add in the tensor cores' precision (see above)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-2 * float(want.abs().max()))
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_self_check_passes_where_the_kernel_runs():
    assert fp8_swiglu.self_check(DEVICE, OUT_DTYPES[-1]) is None


def test_fp8_model_with_the_kernel_scores_as_without_it(tiny_model_dir):
    """``fused_swiglu: true`` under fp8 puts the kernel in every MLP, compiled layers too."""
    from reranker.core.registry import load_backend

    def make(**options):
        return load_backend(
            "qwen3_transformers",
            {"model_name": str(tiny_model_dir), "quantization": "fp8", "dtype": "float32",
             "batch_layout": "packed", **options},
        )  # fmt: skip

    # the kernel as the custom op inside compiled layers (its fake registration traced)
    plain, fused = make(fused_swiglu=False), make(fused_swiglu=True, torch_compile=True)
    try:
        assert fused.fused_swiglu and fused.compiled and not plain.fused_swiglu
        assert fused.meta_extra()["swiglu_kernel"] == "fp8_swiglu"
        assert plain.meta_extra()["swiglu_kernel"] is None
        for query in QUERIES[:2]:
            want = plain.score_with_meta(query, DOCS)[0]
            got = fused.score_with_meta(query, DOCS)[0]
            if DEVICE == "cuda":  # the tensor cores' sums: rankings, not digits
                assert agreement(want, got)["spearman"] >= 0.9
                continue
            # the same fp8 operands and scales; the summation order differs, and where
            # that moves a gated value across an fp8 rounding boundary, down_proj's input
            # moves by one e4m3 step (1/16): 0.014 of P the most measured
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=0.04)
            assert (
                sorted(range(len(DOCS)), key=got.__getitem__)[-5:]
                == sorted(range(len(DOCS)), key=want.__getitem__)[-5:]
            )
    finally:
        plain.close()
        fused.close()
