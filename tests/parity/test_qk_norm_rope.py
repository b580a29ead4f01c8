"""The fused q/k-norm + RoPE + key/value gather kernel (``qk_norm_rope``) against its torch
reference and against transformers' own Qwen3 attention code. Without a GPU the kernel
runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by this folder's conftest): the
same kernel source, executed on the CPU. The whole model with the kernel in its attention
is compared with the model card in test_transformers_parity.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("triton")

from reranker.backends.transformers.kernels import qk_norm_rope  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEAD_DIM = 64


def rotary(positions, dtype):
    """cos/sin as Qwen3's rotary embedding gives them: (tokens, head_dim), theta 1e6."""
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
    freqs = positions.float()[:, None] * inv_freq[None]
    angles = torch.cat((freqs, freqs), -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def inputs(dtype, heads=4, kv_heads=2, seed=0):
    """150 tokens' projection rows as one fused (tokens, q + k + v) matmul output gives
    them: column slices with the stacked row stride, as the kernel sees them with merged
    projections. Tokens 0-9 are a shared prefix that key_index reads before each of two
    documents (tokens 10-69 and 70-149): 160 key rows. More rows than the interpreter's
    rows per program, so that a partly filled block is covered."""
    tokens = 150
    g = torch.Generator().manual_seed(seed)
    width = (heads + 2 * kv_heads) * HEAD_DIM
    qkv = (torch.randn(tokens, width, generator=g) * 3).to(dtype)
    q, k, v = qkv.split([heads * HEAD_DIM, kv_heads * HEAD_DIM, kv_heads * HEAD_DIM], -1)
    q_weight = (1 + torch.randn(HEAD_DIM, generator=g) / 4).to(dtype)
    k_weight = (1 + torch.randn(HEAD_DIM, generator=g) / 4).to(dtype)
    positions = torch.cat([torch.arange(70), torch.arange(10, 90)])
    cos, sin = rotary(positions, dtype)
    key_index = torch.cat([torch.arange(0, 70), torch.arange(0, 10), torch.arange(70, 150)])
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return [to(t) for t in (q, k, v, q_weight, k_weight, cos, sin)], to(key_index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gather", [True, False], ids=["shared-prefix", "in-order"])
def test_kernel_matches_its_reference(dtype, gather):
    op = qk_norm_rope.fused_op()
    assert op is not None
    tensors, key_index = inputs(dtype)
    index = key_index if gather else None
    got = op(*tensors, index, 1e-6)
    want = qk_norm_rope.reference(*tensors, index, 1e-6)
    # float32: summation order only; 16-bit: one rounding either side of a tie at most
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for name, g, w in zip("qkv", got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, **tol, msg=name)
    rows = 160 if gather else 150
    assert got[1].shape == (rows, 2, HEAD_DIM)
    torch.testing.assert_close(
        got[2],
        tensors[2].unflatten(-1, (2, HEAD_DIM))[key_index if gather else slice(None)],
        rtol=0,
        atol=0,
    )


def test_an_odd_number_of_heads_is_masked_not_misread():
    op = qk_norm_rope.fused_op()
    tensors, key_index = inputs(torch.float32, heads=3, kv_heads=1, seed=1)
    got = op(*tensors, key_index, 1e-6)
    want = qk_norm_rope.reference(*tensors, key_index, 1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_reference_is_qwen3_attention_arithmetic(tiny_model_dir):
    """The reference does what transformers' Qwen3 attention does between its projections
    and the attention kernel (float32, so that only summation order differs)."""
    import sys

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    modeling = sys.modules[type(attn).__module__]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 12, model.config.hidden_size, generator=g)
    positions = torch.arange(12)[None]
    cos, sin = model.model.rotary_emb(x, positions)
    with torch.inference_mode():
        q, k, v = attn.q_proj(x[0]), attn.k_proj(x[0]), attn.v_proj(x[0])
        shape = (1, 12, -1, attn.head_dim)
        hf_q = attn.q_norm(q.view(shape)).transpose(1, 2)
        hf_k = attn.k_norm(k.view(shape)).transpose(1, 2)
        hf_q, hf_k = modeling.apply_rotary_pos_emb(hf_q, hf_k, cos, sin)
        index = torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        got = qk_norm_rope.reference(
            q, k, v, attn.q_norm.weight, attn.k_norm.weight, cos[0], sin[0], index,
            attn.q_norm.variance_epsilon,
        )  # fmt: skip
    torch.testing.assert_close(got[0], hf_q[0].transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], hf_k[0].transpose(0, 1)[index], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], v.view(12, -1, attn.head_dim)[index], rtol=0, atol=0)


def test_fusing_covers_every_attention_module_and_keeps_one_copy_of_the_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from reranker.backends.transformers.packed_attention import fuse_qk_norm_rope

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    weights_bytes = _distinct_storage_bytes(model)
    attention = [layer.self_attn for layer in model.model.layers]
    weights = [(a.q_proj.weight.clone(), a.v_proj.weight.clone()) for a in attention]
    assert fuse_qk_norm_rope(model) == model.config.num_hidden_layers
    for attn, (q_weight, v_weight) in zip(attention, weights, strict=True):
        stack = attn.qkv_weight
        assert attn.q_proj.weight.untyped_storage().data_ptr() == stack.data_ptr()
        assert attn.v_proj.weight.untyped_storage().data_ptr() == stack.data_ptr()
        torch.testing.assert_close(attn.q_proj.weight, q_weight, rtol=0, atol=0)
        torch.testing.assert_close(attn.v_proj.weight, v_weight, rtol=0, atol=0)
    assert _distinct_storage_bytes(model) == weights_bytes  # the stacks are not copies


def _distinct_storage_bytes(model):
    storages = {
        p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()
    }
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_startup_self_check_passes_where_the_kernel_runs(dtype):
    """Backends run this before they fuse (a device Triton cannot serve falls back)."""
    assert qk_norm_rope.self_check(DEVICE, dtype) is None
