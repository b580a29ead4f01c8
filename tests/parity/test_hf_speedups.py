"""The transformers speed-ups on the tiny model: RMSNorm fusion counts and exactness,
the last layer at chosen rows, carried residual adds, and a compile whose warm-up fails
leaves the layers eager."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.backends.transformers import speedups  # noqa: E402


@pytest.fixture()
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def test_fused_rms_norm_covers_every_norm_and_keeps_outputs(model):
    ids = torch.tensor([[9693, 2152, 100, 200, 300, 400]])
    with torch.inference_mode():
        before = model.model(input_ids=ids).last_hidden_state
        layers = len(model.model.layers)
        # four per layer (input, post-attention, q, k) and the final norm
        assert speedups.fuse_rms_norms(model) == 4 * layers + 1
        after = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_last_layer_at_rows_returns_exactly_those_rows_of_the_full_forward(model):
    ids = torch.tensor([[9693, 2152, 100, 200, 300, 400, 500]])
    rows = torch.tensor([6, 2, 4])
    with torch.inference_mode():
        full = model.model(input_ids=ids).last_hidden_state
        speedups.last_layer_at_rows(model.model)
        speedups.last_layer_at_rows(model.model)  # idempotent: wrapped once
        assert not hasattr(model.model.layers[-1].layer, "layer")
        picked = model.model(input_ids=ids, last_rows=rows).last_hidden_state
        unchanged = model.model(input_ids=ids).last_hidden_state
    assert picked.shape == (1, 3, full.shape[-1])
    torch.testing.assert_close(picked[0], full[0, rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unchanged, full, rtol=0, atol=0)


def test_carried_residuals_give_the_same_hidden_states_bit_for_bit(model):
    """Each layer's last residual add moves into the next layer: the same additions in
    the same order, so eager outputs match exactly (and last_layer_at_rows still works)."""
    ids = torch.tensor([[9693, 2152, 100, 200, 300, 400, 500]])
    rows = torch.tensor([6, 2])
    layers = len(model.model.layers)
    with torch.inference_mode():
        full = model.model(input_ids=ids).last_hidden_state
        speedups.last_layer_at_rows(model.model)
        assert speedups.carry_residuals(model.model) == layers - 1
        assert speedups.carry_residuals(model.model) == 0  # already carried
        handed_on = []
        model.model.layers[0].register_forward_hook(lambda m, a, out: handed_on.append(out))
        carried = model.model(input_ids=ids).last_hidden_state
        picked = model.model(input_ids=ids, last_rows=rows).last_hidden_state
    torch.testing.assert_close(carried, full, rtol=0, atol=0)
    # the last layer at rows alone computes its queries apart: float32 sums in another order
    torch.testing.assert_close(picked[0], full[0, rows], rtol=1e-5, atol=1e-5)
    residual, mlp_output = handed_on[0]  # what the first layer hands on, unsummed
    assert residual.shape == mlp_output.shape == full.shape


def test_failed_compile_warm_up_leaves_layers_eager(model):
    vocab = model.config.vocab_size

    def warm_up():
        with torch.inference_mode():
            model.model(input_ids=torch.tensor([[vocab + 10]]))  # no such token: IndexError

    with pytest.raises(Exception):  # noqa: B017 - whatever the real failure is
        speedups.compile_layers(model.model.layers, warm_up)
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    assert out.shape == (1, 3, model.config.hidden_size)


def test_flash_attn_3_asked_for_where_it_cannot_run_is_a_clear_startup_error(tiny_model_dir):
    """FlashAttention-3 needs packed 16-bit batches on a Hopper GPU (and vLLM's build of
    it); asking for it elsewhere names what is missing instead of falling back silently."""
    from reranker.backends.transformers.packed_attention import flash_attn_3_unavailable
    from reranker.core.errors import ConfigError
    from reranker.core.registry import load_backend

    assert flash_attn_3_unavailable()  # no CUDA here (and no vllm in this venv)
    options = {"model_name": str(tiny_model_dir), "attention_kernel": "flash_attn_3"}
    with pytest.raises(ConfigError, match="flash_attn_3 needs packed batches on a CUDA device"):
        load_backend("qwen3_transformers", options)
    with pytest.raises(ConfigError, match="flash_attn_3 needs packed batches on a CUDA device"):
        load_backend("qwen3_transformers", {**options, "batch_layout": "packed"})


def test_cpp_wrapper_where_nothing_is_compiled_is_a_clear_startup_error(tiny_model_dir):
    """torch_compile auto compiles only on CUDA: on CPU a C++ wrapper would be ignored."""
    from reranker.core.errors import ConfigError
    from reranker.core.registry import load_backend

    options = {"model_name": str(tiny_model_dir), "compile_wrapper": "cpp"}
    with pytest.raises(ConfigError, match="compile_wrapper: cpp applies to compiled layers"):
        load_backend("qwen3_transformers", options)


def test_cuda_graphs_where_they_cannot_run_are_a_clear_startup_error(tiny_model_dir):
    """CUDA graphs need FlashAttention-3 (and so a Hopper GPU): asked for on CPU, the
    backend refuses to start; under auto it runs without them."""
    from reranker.core.errors import ConfigError
    from reranker.core.registry import load_backend

    options = {"model_name": str(tiny_model_dir), "batch_layout": "packed"}
    with pytest.raises(ConfigError, match="cuda_graphs: true needs packed batches on Flash"):
        load_backend("qwen3_transformers", {**options, "cuda_graphs": True})
    backend = load_backend("qwen3_transformers", options)
    try:
        assert backend.score_with_meta("q", ["d"])[1]["cuda_graphs"] is False
    finally:
        backend.close()


def test_fused_qk_norm_rope_where_it_cannot_run_is_a_clear_startup_error(
    tiny_model_dir, monkeypatch
):
    """The fused q/k-norm + RoPE and SwiGLU kernels run on CUDA (or in Triton's
    interpreter, which this folder's conftest turns on for CPU tests): asked for on a CPU
    without the interpreter (or the attention kernel with padded batches), the backend
    refuses to start; under auto it runs transformers' code."""
    from reranker.core.errors import ConfigError
    from reranker.core.registry import load_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    options = {"model_name": str(tiny_model_dir), "batch_layout": "packed"}
    with pytest.raises(ConfigError, match="fused_qk_norm_rope: true, but it runs on CUDA"):
        load_backend("qwen3_transformers", {**options, "fused_qk_norm_rope": True})
    with pytest.raises(ConfigError, match="fused_qk_norm_rope needs packed batches"):
        load_backend("qwen3_transformers", {"model_name": str(tiny_model_dir),
                                            "fused_qk_norm_rope": True})  # fmt: skip
    with pytest.raises(ConfigError, match="fused_swiglu: true, but it runs on CUDA"):
        load_backend("qwen3_transformers", {**options, "fused_swiglu": True})
    backend = load_backend("qwen3_transformers", options)
    try:
        meta = backend.score_with_meta("q", ["d"])[1]
        assert meta["fused_qk_norm_rope"] is False and meta["fused_swiglu"] is False
    finally:
        backend.close()


def test_fused_swiglu_that_fails_its_self_check_is_a_clear_startup_error(tiny_model_dir):
    """In Triton's interpreter the SwiGLU kernel serves float32 only: asked for in
    bfloat16, the startup self-check (the same one that makes auto fall back on a GPU
    Triton cannot serve) turns it down with the reason."""
    from reranker.core.errors import ConfigError
    from reranker.core.registry import load_backend

    if torch.cuda.is_available():
        pytest.skip("the interpreter's limit; a GPU serves bfloat16")
    options = {"model_name": str(tiny_model_dir), "dtype": "bfloat16", "fused_swiglu": True}
    with pytest.raises(ConfigError, match="fused_swiglu: true, but the kernel's results on cpu"):
        load_backend("qwen3_transformers", options)


def test_runs_expand_on_the_device_as_in_pure_python():
    from reranker.backends.transformers.packing import PromptParts, expand_runs, pack
    from reranker.backends.transformers.qwen3 import _expand_runs

    prompts = [PromptParts("a", [1, 2, 3], [10, 11]), PromptParts("b", [7], []),
               PromptParts("a", [1, 2, 3], [12, 13, 14])]  # fmt: skip
    batch = pack(prompts, share_prefixes=True)
    assert 0 in batch.key_run_lengths  # "b" has nothing to share: an empty prefix run
    for starts, lengths in (
        (batch.position_starts, batch.query_lengths),
        (batch.key_run_starts, batch.key_run_lengths),  # holds a zero-length run
    ):
        expected = expand_runs(starts, lengths)
        on_device = _expand_runs(
            torch, torch.tensor(starts), torch.tensor(lengths), sum(lengths)
        ).tolist()
        assert on_device == expected
