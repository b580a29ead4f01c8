"""The one-pass fp8 quantisation kernels (``fp8_quant``: per-token quantisation, and the
SiLU gating in front of it) against their torch reference, inside a compiled MLP, and the
fp8 model whose MLPs run them against the fp8 model without them. Without a GPU the
kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by this folder's
conftest): the same kernel source on the CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("triton")

from pairs import DOCS, QUERIES  # noqa: E402

from reranker.backends.transformers import fp8  # noqa: E402
from reranker.backends.transformers.kernels import fp8_quant  # noqa: E402
from reranker.compare.metrics import agreement  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rows_of_magnitudes(rows: int, columns: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, columns, generator=g) * torch.logspace(-3, 3, rows)[:, None]
    return x.to(device=DEVICE, dtype=dtype)


def assert_quantised_alike(got, want):
    """Same scales; fp8 values equal, or on a GPU (its exp and division) one step apart
    where a value sits on a rounding boundary."""
    (q, scale), (q_want, scale_want) = got, want
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert q.shape == q_want.shape and scale.shape == scale_want.shape
    torch.testing.assert_close(scale, scale_want, rtol=1e-5, atol=0)
    if DEVICE == "cpu":
        assert torch.equal(q.float(), q_want.float())
    else:
        diff = (q.float() - q_want.float()).abs()
        step = fp8_quant.ONE_STEP * q_want.float().abs() + fp8_quant.SUBNORMAL_STEP
        assert bool((diff <= step).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize(
    "rows, width",
    # a width no power of two (the row is masked); a wide MLP row (16 warps); one row;
    # no rows at all
    [(9, 200), (3, 9728), (1, 64), (0, 64)],
)
def test_kernel_matches_its_reference(dtype, gated, rows, width):
    op = fp8_quant.gated_quant_op() if gated else fp8_quant.quantize_op()
    assert op is not None
    x = rows_of_magnitudes(rows, 2 * width if gated else width, 1, dtype)
    if rows:
        x[0, :3] = 0.0  # zeros, and a value that scales below e4m3's smallest normal, off
        x[0, 3] = x[0].abs().max() * 1.3 * 2**-17  # its grid (rounded to a 2^-9 step)
    assert_quantised_alike(op(x), fp8_quant.reference(x, gated))


def assert_scores_alike(plain, fused, queries=QUERIES[:2]):
    """Two fp8 backends that differ in where a rounding happens score alike: rankings,
    and P within one fp8 step's worth of the random model's sensitivity."""
    for query in queries:
        want = plain.score_with_meta(query, DOCS)[0]
        got = fused.score_with_meta(query, DOCS)[0]
        assert agreement(want, got)["spearman"] >= 0.95
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=0.04)


def test_a_row_of_zeros_quantises_to_zeros():
    q, scale = fp8_quant.quantize_op()(torch.zeros(2, 48, device=DEVICE))
    assert not q.float().any() and bool((scale == fp8.MIN_SCALE).all())


def test_kernel_reads_rows_of_a_strided_view():
    """A column slice of a wider matrix: rows a stride apart, read in place."""
    wide = rows_of_magnitudes(6, 160, 2, torch.float32)
    x = wide[:, 16:144]
    assert not x.is_contiguous()
    assert_quantised_alike(fp8_quant.quantize_op()(x), fp8.quantize_rows(x))


def test_self_check_passes_where_the_kernel_runs():
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    assert fp8_quant.self_check(DEVICE, dtype) is None


def test_compiled_mlp_calls_the_gated_kernel_as_one_op():
    """The op's fake registration traces: a compiled fp8 MLP over it, no graph break."""
    torch.manual_seed(0)
    gate, up, down = (torch.nn.Linear(a, b, bias=False) for a, b in ((64, 96),) * 2 + ((96, 64),))
    gate_up = fp8.FP8Linear.merged([gate, up]).to(DEVICE)
    down_fp8 = fp8.FP8Linear.from_linear(down).to(DEVICE)
    op = fp8_quant.gated_quant_op()

    def mlp(x):
        q, scale = op(gate_up(x))
        return down_fp8.quantized_forward(q, scale)

    x = torch.randn(10, 64, device=DEVICE)
    compiled = torch.compile(mlp, fullgraph=True, dynamic=False)
    want = down_fp8(torch.nn.functional.silu(gate_up(x)[:, :96]) * gate_up(x)[:, 96:])
    torch.testing.assert_close(compiled(x), mlp(x))
    torch.testing.assert_close(compiled(x), want, rtol=0.1, atol=0.1 * float(want.abs().max()))


def test_fp8_model_with_the_gating_kernel_scores_as_without_it(tiny_model_dir):
    """Every MLP over the gate/up matmul + the gating kernel (what ``fused_swiglu: auto``
    puts in under fp8 on a GPU) against the fp8 model with the gating in torch."""
    from reranker.core.registry import load_backend

    def make(fused_swiglu):
        return load_backend(
            "qwen3_transformers",
            {"model_name": str(tiny_model_dir), "quantization": "fp8", "dtype": "float32",
             "batch_layout": "packed", "fused_swiglu": fused_swiglu},
        )  # fmt: skip

    plain = make(False)
    if DEVICE == "cuda":
        fused = make("auto")  # under fp8 on a GPU, auto puts the gating kernel in
        assert fused.fused_swiglu
    else:  # auto is off without CUDA: the layers run eagerly here, so swap the forward
        fused = make(False)
        assert fp8.fuse_gated_mlps(fused._body.layers, gated_quant=fp8_quant.gated_quant_op())
    try:
        # one float32 gating either way; a value on an fp8 rounding boundary may round
        # the other way (the division's last bit)
        assert_scores_alike(plain, fused)
    finally:
        plain.close()
        fused.close()


NORM_DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", NORM_DTYPES)
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("rows, width", [(7, 200), (3, 2560), (0, 64)])
def test_norm_kernels_match_their_reference(dtype, with_residual, rows, width):
    """The residual add, RMSNorm and per-token quantisation in one kernel (a decoder
    layer's norm in front of an fp8 matmul) against torch's ops one after the other."""
    g = torch.Generator().manual_seed(3)
    x = rows_of_magnitudes(rows, width, 4, dtype)
    delta = torch.randn(rows, width, generator=g).to(DEVICE, dtype) if with_residual else None
    weight = (torch.rand(width, generator=g) + 0.5).to(DEVICE, dtype)
    want = fp8_quant.norm_reference(x, delta, weight, 1e-6)
    # float32: to its rounding (a GPU's rsqrt); bf16: one bf16 rounding of the normed row
    # (torch's compiled and eager norms round it once or twice) moves the scale
    rtol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    if with_residual:
        got = fp8_quant.add_norm_quant_op()(x, delta, weight, 1e-6)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        assert got[0].is_contiguous() and got[0].dtype == dtype
        got, want = got[1:], want[1:]
    else:
        got = fp8_quant.norm_quant_op()(x, weight, 1e-6)
    (q, scale), (q_want, scale_want) = got, want
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert q.shape == q_want.shape == (rows, width) and scale.shape == (rows, 1)
    torch.testing.assert_close(scale, scale_want, rtol=rtol, atol=0)
    diff = (q.float() - q_want.float()).abs()
    step = fp8_quant.ONE_STEP * q_want.float().abs() + fp8_quant.SUBNORMAL_STEP
    assert bool((diff <= step).all())


def test_norm_self_check_passes_where_the_kernel_runs():
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    assert fp8_quant.norm_self_check(DEVICE, dtype) is None
    assert fp8_quant.norm_self_check(DEVICE, dtype, width=1024) is None


def _fp8_backend(model_dir, **options):
    from reranker.core.registry import load_backend

    return load_backend(
        "qwen3_transformers",
        {"model_name": str(model_dir), "quantization": "fp8", "dtype": "float32",
         "batch_layout": "packed", "fused_qk_norm_rope": True, **options},
    )  # fmt: skip


def _random_norm_weights(backend, seed):
    """The tiny model's RMSNorm weights are ones: give each norm the same random weights
    in every backend built from it, so that a kernel that dropped or swapped them shows."""
    g = torch.Generator().manual_seed(seed)
    for layer in backend._body.layers:
        inner = layer
        while not hasattr(inner, "input_layernorm"):  # the decoder layer within its wrappers
            inner = inner.layer
        for norm in (inner.input_layernorm, inner.post_attention_layernorm):
            with torch.no_grad():
                norm.weight.mul_(torch.rand(norm.weight.shape, generator=g).to(norm.weight) + 0.5)


def test_fp8_model_with_quantising_norms_scores_as_without_them(tiny_model_dir):
    """Layers that carry their residual adds (as compiled on a GPU), their norms adding,
    normalising and quantising in one kernel and handing QuantizedRows to the stacked
    q/k/v and the gate/up matmuls, against the fp8 model with torch's norms."""
    from reranker.backends.transformers import speedups

    eager = {"fused_swiglu": False, "torch_compile": False, "cuda_graphs": False}  # on a GPU too
    plain, fused = (_fp8_backend(tiny_model_dir, **eager), _fp8_backend(tiny_model_dir, **eager))
    for backend in (plain, fused):
        _random_norm_weights(backend, 5)
    layers = fused._body.layers
    assert fp8.fuse_gated_mlps(layers, gated_quant=fp8_quant.gated_quant_op())
    speedups.carry_residuals(fused._body)
    count = fp8.fuse_norm_quant(
        layers[:-1],
        fp8_quant.norm_quant_op(),
        fp8_quant.add_norm_quant_op(),
        fp8_quant.quantize_op(),
    )
    assert count == 2 * (len(layers) - 1)  # both norms of every layer carrying its add
    calls = []
    for layer in layers[:-1]:
        for norm in (layer.layer.input_layernorm, layer.layer.post_attention_layernorm):
            fn = norm.add_norm_quant
            norm.add_norm_quant = lambda h, fn=fn: calls.append(1) or fn(h)
    try:
        assert_scores_alike(plain, fused)
        assert len(calls) >= 2 * 2 * (len(layers) - 1)  # two queries, a batch or more each
    finally:
        plain.close()
        fused.close()


def test_compiled_fp8_backend_quantises_in_its_norms_and_says_so(tiny_model_dir):
    """The backend's own wiring: under fp8 with ``fused_rms_norm`` and compiled layers the
    norms take the kernel (``meta.fp8_fused_norms``), and the compiled model scores as
    the same model with ``fused_rms_norm: false``; without compiled layers (where no
    layer carries its residual add, so nothing would call it) they do not."""
    options = {"fused_rms_norm": True, "torch_compile": True}
    fused = _fp8_backend(tiny_model_dir, **options)
    plain = _fp8_backend(tiny_model_dir, **{**options, "fused_rms_norm": False})
    eager = _fp8_backend(tiny_model_dir, fused_rms_norm=True, torch_compile=False)
    try:
        # the input norms (read by the stacked q/k/v); the post-attention ones where the
        # MLP runs the gating kernel (fused_swiglu: on a GPU)
        per_layer = 2 if fused.fused_swiglu else 1
        assert fused.fp8_fused_norms == per_layer * (len(fused._body.layers) - 1)
        meta = fused.score_with_meta(QUERIES[0], DOCS)[1]
        assert meta["compiled"] and meta["fp8_fused_norms"] is True
        assert plain.score_with_meta(QUERIES[0], DOCS)[1]["fp8_fused_norms"] is False
        assert_scores_alike(plain, fused, QUERIES[:1])
        assert eager.score_with_meta(QUERIES[0], DOCS[:2])[1]["fp8_fused_norms"] is False
    finally:
        for backend in (fused, plain, eager):
            backend.close()
