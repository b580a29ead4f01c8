"""qwen3_transformers on CUDA: the varlen kernel, the fused RMSNorm and the compiled layers
that CUDA gets by default change no score beyond floating-point rounding."""

from __future__ import annotations

import pytest
from pairs import DOCS, MAX_MODEL_LEN, QUERIES
from parity_check import assert_matches_reference

from reranker.backends.transformers.packed_attention import (
    causal_attention,
    flash_attn_3_unavailable,
    packed_attention,
    varlen_kernel,
)
from reranker.core.registry import load_backend


def on_hopper():
    """Whether this GPU is sm90 or newer (the SwiGLU kernel's TMA loads need it)."""
    import torch

    return torch.cuda.get_device_capability()[0] >= 9


def make(model_dir, **options):
    return load_backend(
        "qwen3_transformers",
        {"model_name": str(model_dir), "max_model_len": MAX_MODEL_LEN, **options},
    )


@pytest.fixture(scope="module")
def fused_compiled_fp32(tiny_model_dir):
    """Packed, fused RMSNorm, compiled layers, in float32 (FlashAttention has no float32:
    attention runs per prompt), so the comparison with the model card can be tight."""
    b = make(
        tiny_model_dir,
        dtype="float32",
        batch_layout="packed",
        fused_rms_norm=True,
        torch_compile=True,
    )
    yield b
    b.close()


# The model card runs on the CPU. float32 on the GPU (other GEMM algorithms, other
# summation orders, batches of other sizes) lands within 5.8e-5..6.3e-5 of it in logit
# differences with and without the fused q/k-norm + RoPE kernel when run alone, and once
# 1.1e-4 in a whole-suite run; a wrong mask, position or gathered row is off by > 1e-2.
GPU_FP32_TOLERANCE = 2e-4


def test_fused_and_compiled_on_cuda_match_model_card_fp32(fused_compiled_fp32, reference):
    _, meta = fused_compiled_fp32.score_with_meta(QUERIES[0], DOCS)
    assert meta["device"].startswith("cuda") and meta["compiled"] and meta["fused_rms_norm"]
    assert meta["fused_qk_norm_rope"]  # auto: on CUDA whatever the dtype
    assert meta["fused_swiglu"] is (on_hopper())  # TMA: sm90+
    compared = assert_matches_reference(fused_compiled_fp32, reference, GPU_FP32_TOLERANCE)
    assert compared >= 50


def kernel_or_skip(name):
    """The named varlen kernel; torch's must exist, FlashAttention-3 needs vLLM and sm90."""
    if name == "flash_attn_3" and flash_attn_3_unavailable():
        pytest.skip(flash_attn_3_unavailable())
    kernel = varlen_kernel(name)
    assert kernel is not None, "this torch has no varlen FlashAttention"
    return kernel


KERNELS = pytest.mark.parametrize("kernel_name", ["torch", "flash_attn_3"])


@KERNELS
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_varlen_kernel_matches_per_prompt_attention(dtype, kernel_name):
    import torch

    kernel = kernel_or_skip(kernel_name)
    torch.manual_seed(0)
    lengths = [17, 33, 1, 250, 64]
    tokens, heads, kv_heads, dim = sum(lengths), 16, 8, 128
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (
        torch.randn(1, h, tokens, dim, device="cuda", dtype=getattr(torch, dtype))
        for h in (heads, kv_heads, kv_heads)
    )
    kwargs = {"scaling": dim**-0.5, "cu_seq_lens_q": bounds.cuda(), "max_length_q": 250}
    fast, _ = packed_attention(causal_attention(kernel), None, q, k, v, None, **kwargs)
    reference, _ = packed_attention(causal_attention(None), None, q, k, v, None, **kwargs)
    assert fast.shape == (1, tokens, heads, dim)
    # Both round once to the output type; allow a few units in the last place (bf16:
    # 1 ulp of a value in [2, 4) is 0.0156). A wrong mask or head grouping is off by O(1).
    ulps = 4 * torch.finfo(fast.dtype).eps
    torch.testing.assert_close(fast.float(), reference.float(), rtol=ulps, atol=ulps)


@KERNELS
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_varlen_kernel_with_shared_prefixes_matches_per_sequence_attention(dtype, kernel_name):
    """Sequences with more keys than queries (a shared prefix first): FlashAttention's
    causal mask must align the queries with the last keys, as the reference path does."""
    import torch

    from reranker.backends.transformers.packing import PromptParts, pack

    kernel = kernel_or_skip(kernel_name)
    torch.manual_seed(1)
    prompts = [
        PromptParts(j, list(range(p)), list(range(n)))
        for j, p, n in [(0, 70, 17), (0, 70, 300), (1, 65, 1), (0, 70, 64), (1, 65, 129)]
    ]
    batch = pack(prompts, share_prefixes=True)
    tokens, heads, kv_heads, dim = len(batch.ids), 16, 8, 128
    q, k, v = (
        torch.randn(1, h, tokens, dim, device="cuda", dtype=getattr(torch, dtype))
        for h in (heads, kv_heads, kv_heads)
    )
    kwargs = {
        "scaling": dim**-0.5,
        "cu_seq_lens_q": torch.tensor(batch.cu_query, dtype=torch.int32, device="cuda"),
        "cu_seq_lens_k": torch.tensor(batch.cu_key, dtype=torch.int32, device="cuda"),
        "max_length_q": max(batch.query_lengths),
        "max_length_k": max(batch.key_lengths),
        "key_index": torch.tensor(batch.key_index, device="cuda"),
    }
    fast, _ = packed_attention(causal_attention(kernel), None, q, k, v, None, **kwargs)
    reference, _ = packed_attention(causal_attention(None), None, q, k, v, None, **kwargs)
    ulps = 4 * torch.finfo(fast.dtype).eps
    torch.testing.assert_close(fast.float(), reference.float(), rtol=ulps, atol=ulps)


def worst_gap_to(reference, backend):
    """The largest |P(yes) difference| from ``reference`` over every query and usable doc."""
    from parity_check import usable

    docs = [d.strip() for d in DOCS if usable(d)]
    worst = 0.0
    for query in QUERIES:
        want, _ = reference.score(query, docs)
        got = backend.score(query, docs)
        worst = max(worst, *(abs(x - y) for x, y in zip(got, want, strict=True)))
    return worst


@pytest.fixture(scope="module")
def plain_bfloat16_gap(tiny_model_dir, reference):
    """How far a plain bf16 forward (padded, unfused, eager) is from the fp32 model card."""
    plain = make(
        tiny_model_dir,
        dtype="bfloat16",
        batch_layout="padded",
        fused_rms_norm=False,
        torch_compile=False,
    )
    try:
        return worst_gap_to(reference, plain)
    finally:
        plain.close()


@pytest.mark.parametrize(
    "compile_wrapper, attention_kernel, triton_kernels",
    [("python", "auto", True), ("cpp", "auto", True), ("python", "torch", True),
     ("python", "auto", False)],
)  # fmt: skip
def test_bfloat16_defaults_are_as_close_to_fp32_as_plain_bfloat16(
    tiny_model_dir,
    reference,
    plain_bfloat16_gap,
    compile_wrapper,
    attention_kernel,
    triton_kernels,
):
    """The CUDA defaults (packed, shared query prefixes, fused RMSNorm, the fused q/k-norm
    + RoPE and SwiGLU Triton kernels or transformers' own code, compiled; the compiled
    layers launched from Python or from inductor's C++ wrapper; FlashAttention-3 and CUDA
    graphs where they run, and torch's FlashAttention-2) in bf16 round differently from a
    plain bf16 forward, but must be no further from the fp32 model
    card than plain bf16 is: a wrong mask or position is off by far more."""
    fast = make(
        tiny_model_dir,
        dtype="bfloat16",
        compile_wrapper=compile_wrapper,
        attention_kernel=attention_kernel,
        fused_qk_norm_rope="auto" if triton_kernels else False,
        fused_swiglu="auto" if triton_kernels else False,
    )
    try:
        _, meta = fast.score_with_meta(QUERIES[0], DOCS)
        in_force = ("batch_layout", "share_query_prefix", "fused_rms_norm", "compiled")
        assert [meta[key] for key in in_force] == ["packed", True, True, True]
        assert meta["fused_qk_norm_rope"] is triton_kernels
        assert meta["fused_swiglu"] is (triton_kernels and on_hopper())
        assert meta["compile_wrapper"] == compile_wrapper
        if attention_kernel == "torch":
            assert meta["attention_kernel"] == "torch" and not meta["cuda_graphs"]
        worst = worst_gap_to(reference, fast)
        print(
            f"bfloat16 vs fp32 model card: max |dP| defaults ({compile_wrapper} wrapper, "
            f"{meta['attention_kernel']}, CUDA graphs {meta['cuda_graphs']}, Triton kernels "
            f"{triton_kernels}) "
            f"{worst:.3e}, plain {plain_bfloat16_gap:.3e}"
        )
        assert worst <= max(1.5 * plain_bfloat16_gap, 0.01)
    finally:
        fast.close()


def test_cuda_graphs_replay_first_batches_and_change_no_score(tiny_model_dir):
    """Where FlashAttention-3 runs, the defaults capture CUDA graphs at startup and replay
    a call's first batches through them, padded to a static shape. The same backend with
    its graphs set aside launches the same batches kernel by kernel: the probabilities
    agree up to bf16 rounding (another row count can pick another GEMM algorithm); a
    padding row leaking into a real one would be off by far more."""
    from parity_check import usable

    if flash_attn_3_unavailable():
        pytest.skip(flash_attn_3_unavailable())
    docs = [d.strip() for d in DOCS if usable(d)]
    fast = make(tiny_model_dir, dtype="bfloat16")
    try:
        graphs = fast._graphs
        assert graphs is not None and fast.score_with_meta(QUERIES[0], docs)[1]["cuda_graphs"]
        before = graphs.replays
        graphed = [fast.score(query, docs) for query in QUERIES]
        assert graphs.replays >= before + len(QUERIES)
        fast._graphs = None
        launched = [fast.score(query, docs) for query in QUERIES]
        fast._graphs = graphs
        worst = max(
            abs(x - y)
            for got, want in zip(graphed, launched, strict=True)
            for x, y in zip(got, want, strict=True)
        )
        print(f"CUDA graphs vs launched batches: max |dP| {worst:.3e}")
        assert worst <= 0.01
    finally:
        fast.close()


def test_documents_in_chunks_score_as_whole_requests(tiny_model_dir):
    """On a GPU a request of more than 256 documents is tokenised 16 at a time and its
    batches are filled with whole chunks (its first 32 documents alone, first). The same
    requests scored as whole requests (no chunks, no head) agree up to bf16 rounding, and
    each request's chunks add up to its tokens."""
    from reranker.backends.transformers import qwen3
    from reranker.core.protocol import ScoreRequest

    docs = [f"document {k}: " + "words about rivers and stones " * (1 + k % 40) for k in range(300)]
    requests = [ScoreRequest(QUERIES[0], docs), ScoreRequest(QUERIES[1], docs[:40])]
    fast = make(tiny_model_dir, dtype="bfloat16", max_batch_tokens=8192)
    try:
        assert (fast.chunk_docs, fast.head_docs) == (qwen3.GPU_CHUNK_DOCS, qwen3.GPU_HEAD_DOCS)
        assert len(docs) > fast.chunked_above == qwen3.GPU_CHUNKED_ABOVE
        chunked = fast.score_requests(requests)
        fast.chunk_docs = fast.head_docs = 0
        whole = fast.score_requests(requests)
    finally:
        fast.close()
    worst = max(
        abs(x - y)
        for (got, _), (want, _) in zip(chunked, whole, strict=True)
        for x, y in zip(got, want, strict=True)
    )
    print(f"chunked vs whole requests: max |dP| {worst:.3e}")
    assert worst <= 0.01
    for (_, got), (_, want) in zip(chunked, whole, strict=True):
        assert got["scored_tokens"] == want["scored_tokens"]
