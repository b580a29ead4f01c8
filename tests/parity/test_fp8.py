"""``quantization: fp8`` on the CPU, where torch's ``_scaled_mm`` has a reference kernel:
the same quantisation and scales as on a GPU, the real tokenizer and forward passes.

FP8Linear against the float32 linear layer it replaces (the fp8 rounding bound) and
against its own dequantised operands (exact); the merged gate/up and q/k/v layers against
their parts; the tiny model's scores with fp8 against its unquantised ones (rankings
agree; the random tiny model's scores move more than a trained model's would); the
compiled, packed path with the fused q/k-norm + RoPE kernel; the settings that cannot
run, as startup errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pairs import DOCS, MAX_MODEL_LEN, QUERIES  # noqa: E402

from reranker.backends.transformers import fp8  # noqa: E402
from reranker.compare.metrics import agreement  # noqa: E402
from reranker.core.errors import ConfigError  # noqa: E402
from reranker.core.registry import load_backend  # noqa: E402

# e4m3 keeps 3 mantissa bits: each operand is within 1/16 of its value, and a dot
# product of many terms lands at ~3.6% of the result's norm (random inputs); 6% bounds it.
FP8_RELATIVE_ERROR = 0.06


def linear(rows: int, columns: int, bias: bool = False, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(columns, rows, bias=bias).eval()


def relative_error(got, want) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_fp8_linear_is_within_the_fp8_rounding_of_the_linear_layer(dtype, bias):
    layer = linear(96, 256, bias).to(dtype)
    x = torch.randn(3, 7, 256, generator=torch.Generator().manual_seed(1)).to(dtype)
    quantized = fp8.FP8Linear.from_linear(layer)
    with torch.inference_mode():
        want, got = layer(x), quantized(x)
    assert got.shape == want.shape and got.dtype == dtype
    assert relative_error(got, want) < FP8_RELATIVE_ERROR
    assert quantized.weight_t.dtype == torch.float8_e4m3fn
    assert quantized.scale.shape == (1, 96) and quantized.scale.dtype == torch.float32
    assert not quantized.weight_t.is_contiguous() and quantized.weight_t.t().is_contiguous()


def test_fp8_linear_computes_exactly_its_dequantised_operands():
    layer = linear(64, 128)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(2)) * 30
    x[1] = 0.0  # a row of zeros quantises to zeros, not NaN
    quantized = fp8.FP8Linear.from_linear(layer)
    q, scale = fp8.quantize_rows(x)
    assert scale.shape == (5, 1) and q.abs().float().amax() <= fp8.FP8_MAX
    want = (q.float() * scale) @ quantized.dequantized_weight().t()
    with torch.inference_mode():
        got = quantized(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], torch.zeros(64))


def test_merged_layer_and_its_views_equal_the_layers_quantised_alone():
    gate, up = linear(48, 64, seed=3), linear(80, 64, seed=4)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    merged = fp8.FP8Linear.merged([gate, up])
    gate_view, up_view = merged.split([48, 80])
    with torch.inference_mode():
        both = merged(x)
        alone = [fp8.FP8Linear.from_linear(layer)(x) for layer in (gate, up)]
        views = [gate_view(x), up_view(x)]
    assert torch.equal(both, torch.cat(alone, dim=-1))
    assert all(torch.equal(v, a) for v, a in zip(views, alone, strict=True))
    assert gate_view.weight_t.data_ptr() == merged.weight_t.data_ptr()  # a view, no copy


def test_layers_of_widths_the_matmul_refuses_keep_their_dtype():
    block = torch.nn.Sequential(torch.nn.Linear(64, 10), torch.nn.Linear(10, 64))
    assert fp8.quantize_layers([block]) == 0
    assert all(isinstance(m, torch.nn.Linear) for m in block)


def test_a_device_without_fp8_matmuls_is_a_clear_error():
    why = fp8.fp8_unavailable(torch.device("mps"))
    assert why and "compute capability 8.9" in why and "mps" in why
    with pytest.raises(ConfigError, match="quantization: fp8, but .* set quantization: none"):
        fp8.check_device(torch.device("mps"))
    assert fp8.fp8_unavailable(torch.device("cpu")) is None
    assert fp8.self_check("cpu") is None


def test_quantised_decoder_keeps_embeddings_and_head(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    layers = model.model.layers
    assert fp8.quantize_layers(layers) == 6 * len(layers)  # q, k, v, o, gate_up, down
    mlp, attn = layers[0].mlp, layers[0].self_attn
    assert isinstance(mlp.gate_up_proj, fp8.FP8Linear) and isinstance(mlp.down_proj, fp8.FP8Linear)
    assert all(isinstance(getattr(attn, n), fp8.FP8Linear) for n in ("q_proj", "o_proj"))
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.get_output_embeddings().weight.dtype == torch.float32


def spearman_per_query(a, b) -> list[float]:
    a_scores = [a.score(query, DOCS) for query in QUERIES]
    b_scores = [b.score(query, DOCS) for query in QUERIES]
    return [agreement(x, y)["spearman"] for x, y in zip(a_scores, b_scores, strict=True)]


def make(model_dir, **options):
    options = {"model_name": str(model_dir), "max_model_len": MAX_MODEL_LEN, **options}
    return load_backend("qwen3_transformers", options)


@pytest.fixture(scope="module")
def unquantized(tiny_model_dir):
    backend = make(tiny_model_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def fp8_padded(tiny_model_dir):
    backend = make(tiny_model_dir, quantization="fp8")
    yield backend
    backend.close()


def test_fp8_scores_rank_as_the_unquantised_model(unquantized, fp8_padded):
    scores, meta = fp8_padded.score_with_meta(QUERIES[0], DOCS)
    assert meta["quantization"] == "fp8" and meta["dtype"] == "float32"
    assert fp8_padded.fp8_matmuls == 12 and not fp8_padded.fused_swiglu
    spearman = spearman_per_query(unquantized, fp8_padded)
    # the random tiny model, 17 documents a query: 0.93, 0.99, 1.00, 0.97 measured
    assert min(spearman) >= 0.85 and sum(spearman) / len(spearman) >= 0.9


@pytest.fixture
def scaled_mm_calls(monkeypatch):
    """The ``use_fast_accum`` of each ``torch._scaled_mm`` call from now on (the CPU's
    reference kernel ignores it: what is recorded is what a GPU's kernel would get)."""
    calls: list[bool] = []
    real = torch._scaled_mm

    def recording(*args, **kwargs):
        calls.append(bool(kwargs.get("use_fast_accum", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", recording)
    return calls


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_fp8_fast_accum_reaches_every_fp8_matmul_and_the_meta(
    tiny_model_dir, scaled_mm_calls, unquantized, fast, layout
):
    """Every fp8 matmul of a forward pass gets the option (on by default): the padded
    path's separate q/k/v, the packed path's stacked q/k/v, merged gate/up, o and down."""
    options = {"quantization": "fp8", "batch_layout": layout, "torch_compile": False}
    if layout == "packed":
        options |= {"fused_rms_norm": True, "fused_qk_norm_rope": True}
    if not fast:
        options["fp8_fast_accum"] = False
    backend = make(tiny_model_dir, **options)
    try:
        # the startup self-check and warm-up run the matmuls as the layers will
        assert scaled_mm_calls and set(scaled_mm_calls) == {fast}
        scaled_mm_calls.clear()
        _, meta = backend.score_with_meta(QUERIES[0], DOCS[:3])
        assert backend.fp8_matmuls == (8 if layout == "packed" else 12)
        assert len(scaled_mm_calls) >= backend.fp8_matmuls
        assert set(scaled_mm_calls) == {fast}
        assert meta["fp8_fast_accum"] is fast
    finally:
        backend.close()
    assert unquantized.score_with_meta(QUERIES[0], DOCS[:1])[1]["fp8_fast_accum"] is None


def test_packed_fused_compiled_fp8_scores_as_padded_fp8(fp8_padded, tiny_model_dir):
    """The stacked q/k/v projection as one fp8 layer under the fused q/k-norm + RoPE
    kernel (Triton's interpreter here), inside compiled layers."""
    backend = make(
        tiny_model_dir,
        quantization="fp8",
        batch_layout="packed",
        fused_rms_norm=True,
        fused_qk_norm_rope=True,
        torch_compile=True,
    )
    try:
        assert backend.compiled and backend.fused_qk_norm_rope
        assert backend.fp8_matmuls == 4 * 2  # qkv, o, gate_up, down a layer
        # no 16-bit copy of a quantised weight is left in the layers
        import torch

        wide = [
            name
            for name, p in backend._body.layers.named_parameters()
            if p.dim() == 2 and p.dtype != torch.float8_e4m3fn
        ]
        assert wide == [], wide
        spearman = spearman_per_query(fp8_padded, backend)
        assert min(spearman) >= 0.95
    finally:
        backend.close()


def test_cross_encoder_fp8_keeps_its_head_and_ranks_alike(tmp_path, scaled_mm_calls):
    from reranker.testing import tiny_cross_encoders as tce

    if not tce.tokenizer_source_available("bert"):
        pytest.skip("the bert tokenizer is not installed")
    directory = tce.build_model(tmp_path / "bert", "bert")
    options = {"model_name": str(directory)}
    plain = load_backend("cross_encoder_transformers", options)
    quantized = load_backend("cross_encoder_transformers", {**options, "quantization": "fp8"})
    try:
        assert quantized.fp8_matmuls > 0
        assert isinstance(quantized.model.classifier, torch.nn.Linear)
        scaled_mm_calls.clear()
        _, meta = quantized.score_with_meta(QUERIES[1], DOCS)
        assert meta["quantization"] == "fp8" and meta["fp8_fast_accum"] is True
        assert len(scaled_mm_calls) >= quantized.fp8_matmuls and all(scaled_mm_calls)
        spearman = spearman_per_query(plain, quantized)
        assert sum(spearman) / len(spearman) >= 0.8
    finally:
        plain.close()
        quantized.close()
