"""The fused SiLU-gated MLP kernel (``swiglu``) against its torch reference and against
transformers' own Qwen3 MLP. Without a GPU the kernel runs in Triton's interpreter
(``TRITON_INTERPRET=1``, set by this folder's conftest) in float32: the same kernel source,
executed on the CPU; bfloat16/float16 run on a GPU (``scripts/test.sh gpu``). The whole
model with the kernel in its MLPs is compared with the model card in
test_transformers_parity.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("triton")

from reranker.backends.transformers.kernels import swiglu  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter reads 16-bit tiles through TMA descriptors wrongly (float32 only)
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])


def weights(hidden, intermediate, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(intermediate, hidden, generator=g) / hidden**0.5).to(DEVICE, dtype)
        for _ in range(2)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows, hidden, intermediate",
    # whole tiles; partial row and column tiles; a depth that is no multiple of a tile's;
    # a single row (the last layer reads few rows); no rows at all
    [(256, 128, 256), (333, 128, 200), (70, 80, 96), (1, 128, 256), (0, 128, 256)],
)
def test_kernel_matches_its_reference(dtype, rows, hidden, intermediate):
    op = swiglu.fused_op()
    assert op is not None
    gate_weight, up_weight = weights(hidden, intermediate, dtype)
    x = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    got = op(x, gate_weight, up_weight)
    want = swiglu.reference(x, gate_weight, up_weight)
    assert got.shape == (rows, intermediate) and got.dtype == dtype
    # float32: summation order only; 16-bit: one rounding either side of a tie at most
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(got, want, **tol)


def test_a_row_strided_input_is_read_as_its_values():
    """A view with a row stride of its own (a slice of a wider tensor) is copied to the
    unit stride TMA reads, not misread."""
    op = swiglu.fused_op()
    gate_weight, up_weight = weights(64, 128, torch.float32)
    wide = torch.randn(50, 192, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x = wide[:, 64:128]
    torch.testing.assert_close(
        op(x, gate_weight, up_weight), swiglu.reference(x, gate_weight, up_weight)
    )


@pytest.fixture()
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def test_fused_mlps_compute_what_transformers_mlps_compute(model):
    """Every MLP of the model takes the kernel, keeps its weights, and gives transformers'
    result on a padded-batch-shaped input (batch, tokens, hidden) and a packed one."""
    model = model.to(DEVICE)
    mlps = [layer.mlp for layer in model.model.layers]
    weights_before = [m.gate_proj.weight.data_ptr() for m in mlps]
    g = torch.Generator().manual_seed(4)
    inputs = [torch.randn(shape, generator=g).to(DEVICE) for shape in ((2, 9, 128), (1, 37, 128))]
    with torch.inference_mode():
        want = [[mlp(x) for x in inputs] for mlp in mlps]
        assert swiglu.fuse_mlps(model) == model.config.num_hidden_layers
        got = [[mlp(x) for x in inputs] for mlp in mlps]
    assert [m.gate_proj.weight.data_ptr() for m in mlps] == weights_before
    for got_mlp, want_mlp in zip(got, want, strict=True):
        for g_out, w_out in zip(got_mlp, want_mlp, strict=True):
            assert g_out.shape == w_out.shape
            # float32 summation order only (the tiny model's weights are large: scale it)
            scale = w_out.abs().max().item()
            torch.testing.assert_close(g_out, w_out, rtol=1e-5, atol=1e-6 * scale)


def test_only_bias_free_silu_gated_mlps_with_aligned_rows_are_fused():
    class MLP(torch.nn.Module):
        def __init__(self, hidden=64, intermediate=128, bias=False, act=None):
            super().__init__()
            self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=bias)
            self.up_proj = torch.nn.Linear(hidden, intermediate, bias=bias)
            self.down_proj = torch.nn.Linear(intermediate, hidden, bias=bias)
            self.act_fn = act if act is not None else torch.nn.SiLU()

    class Model(torch.nn.Module):
        def __init__(self, *mlps):
            super().__init__()
            self.mlps = torch.nn.ModuleList(mlps)

    model = Model(MLP(), MLP(bias=True), MLP(act=torch.nn.GELU()), MLP(hidden=66))
    assert swiglu.fuse_mlps(model) == 1  # 66 float32 columns: rows of 264 bytes
    assert "forward" in vars(model.mlps[0]) and "forward" not in vars(model.mlps[1])
    assert swiglu.supports(1024, 3072, 2) and not swiglu.supports(1001, 3072, 2)


@pytest.mark.parametrize("dtype", DTYPES[:2])
def test_the_startup_self_check_passes_where_the_kernel_runs(dtype):
    """Backends run this before they fuse (a device Triton cannot serve falls back)."""
    assert swiglu.self_check(DEVICE, dtype) is None


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's 16-bit limit, CPU only")
def test_the_self_check_turns_down_what_the_interpreter_cannot_do():
    assert "disagree" in swiglu.self_check("cpu", torch.bfloat16)
