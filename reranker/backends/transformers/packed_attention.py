"""Padding-free ("packed") attention for the transformers backend.

A packed batch is one row holding every prompt back to back: no padding tokens are
computed, and each prompt attends only to itself (causally). Position ids restart at 0
for each prompt; ``cu_seq_lens`` holds the prompt boundaries ([0, n0, n0+n1, ...]).

The attention function is registered in transformers' ``AttentionInterface`` under
:data:`ATTENTION_NAME`; transformers then builds no mask for it (names outside its mask
table get none) and passes the ``cu_seq_lens_q`` / ``max_length_q`` keyword arguments
that the backend gives the model straight through to it, with ``cu_seq_lens_k``,
``max_length_k`` and ``key_index`` where a batch shares query prefixes (``packing``).
On CUDA in fp16/bf16 it runs a variable-length FlashAttention kernel: torch's own
FlashAttention-2 (torch >= 2.10) or, on Hopper, FlashAttention-3 from vLLM's build;
elsewhere (CPU, float32) it runs one causal ``scaled_dot_product_attention`` per
sequence, the same arithmetic.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from reranker.backends.transformers.kernels import qk_norm_rope
from reranker.backends.transformers.quantized_rows import QuantizedRows

ATTENTION_NAME = "reranker_packed"

# Each varlen kernel and the name its attention function is registered under with
# transformers, which takes any name with "flash" in it for a hub kernel: hence "fa3".
_REGISTERED_AS = {"torch": ATTENTION_NAME, "flash_attn_3": f"{ATTENTION_NAME}_fa3"}
VARLEN_KERNELS = tuple(_REGISTERED_AS)


def varlen_kernel(name: str = "torch") -> Callable[..., Any] | None:
    """``f(q, k, v, cu_q, cu_k, max_q, max_k, scale)``: causal varlen FlashAttention over
    (tokens, heads, head_dim) tensors, GQA included; None where this machine lacks it.
    Where a sequence has more keys than queries (a shared prefix before its own tokens),
    its queries are the last ones: query i sees keys up to i + (keys - queries).

    ``name`` is one of :data:`VARLEN_KERNELS`: ``torch`` (the FlashAttention-2 kernel
    that torch ships) or ``flash_attn_3`` (Hopper's FlashAttention-3, see
    :func:`flash_attn_3_unavailable`).
    """
    if name not in VARLEN_KERNELS:
        raise ValueError(f"unknown varlen kernel {name!r}; one of {VARLEN_KERNELS}")
    return _torch_flash_kernel() if name == "torch" else _flash_attn_3_kernel()[0]


def flash_attn_3_unavailable() -> str | None:
    """Why FlashAttention-3 cannot run here, or None where it can."""
    return _flash_attn_3_kernel()[1]


@functools.cache
def _torch_flash_kernel() -> Callable[..., Any] | None:
    """torch's FlashAttention-2 (torch >= 2.10).

    K/V keep their own (fewer) heads: FlashAttention shares each K/V head among its group
    of query heads. torch's ``varlen_attn`` says so with ``enable_gqa``; where a release
    lacks that flag (2.10, 2.11) the same kernel is called through the aten op that
    ``varlen_attn`` wraps, since copying K/V out to every query head costs more than
    the attention itself saves.
    """
    try:
        import torch
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "enable_gqa" in params and "window_size" in params and "scale" in params:

        def causal_varlen(
            q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, scale: Any
        ) -> Any:
            return varlen_attn(
                q, k, v, cu_q, cu_k, max_q, max_k,
                scale=scale, window_size=(-1, 0), enable_gqa=True,
            )  # fmt: skip

        return causal_varlen
    flash = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if flash is None:
        return None

    def causal_flash(
        q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, scale: Any
    ) -> Any:
        return flash(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale)[0]

    return causal_flash


@functools.cache
def _flash_attn_3_kernel() -> tuple[Callable[..., Any] | None, str | None]:
    """FlashAttention-3 (Hopper, sm90) from the build that vLLM wheels carry
    (``vllm.vllm_flash_attn``): (kernel, None), or (None, why not).

    It runs as a torch custom op with a shape-only fake, so that compiled decoder layers
    trace through it as one graph instead of breaking around an opaque extension call.
    """
    try:
        import torch
        from vllm.vllm_flash_attn import flash_attn_varlen_func, is_fa_version_supported
    except Exception as exc:  # ImportError, or a vLLM build that fails to load here
        return None, f"vllm.vllm_flash_attn is not importable ({exc}); install vllm"
    if not torch.cuda.is_available() or not is_fa_version_supported(3):
        return None, "FlashAttention-3 needs a Hopper (sm90) GPU"

    def causal_fa3(
        q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, scale: float
    ) -> Any:
        return flash_attn_varlen_func(
            q, k, v, max_q, cu_q, max_k, cu_seqlens_k=cu_k,
            softmax_scale=scale, causal=True, fa_version=3,
        )  # fmt: skip

    op = torch.library.custom_op(
        "reranker::flash_attn_3_varlen_causal",
        mutates_args=(),
        schema="(Tensor q, Tensor k, Tensor v, Tensor cu_q, Tensor cu_k, SymInt max_q, "
        "SymInt max_k, float scale) -> Tensor",
    )(causal_fa3)
    op.register_fake(lambda q, *_: torch.empty_like(q))
    return op, None


def varlen_kernel_available(device: Any, dtype: Any) -> bool:
    """Whether the variable-length kernel runs on ``device`` in ``dtype`` (CUDA, torch >=
    2.10, a 16-bit float type)."""
    half = getattr(dtype, "itemsize", 4) == 2 and getattr(dtype, "is_floating_point", False)
    return getattr(device, "type", str(device)) == "cuda" and half and varlen_kernel() is not None


def causal_attention(kernel: Callable[..., Any] | None) -> Callable[..., Any]:
    """``f(q, k, v, cu_q, cu_k, max_q, max_k, scale)``: causal attention within each
    packed sequence over (tokens, heads, head_dim) tensors (see :func:`varlen_kernel` for
    sequences with more keys than queries): ``kernel`` for CUDA fp16/bf16, one SDPA call
    per sequence otherwise. ``kernel`` is bound here, so nothing is looked up while
    torch.compile traces."""

    def attend(
        q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, scale: Any
    ) -> Any:
        if kernel is not None and q.is_cuda and q.element_size() == 2:  # FlashAttention
            return kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale)
        return _attention_per_prompt(q, k, v, cu_q, cu_k, scale)

    return attend


def register(kernel_name: str = "torch") -> str:
    """Register packed attention on the ``kernel_name`` varlen kernel (one of
    :data:`VARLEN_KERNELS`) with transformers; returns the name it goes by there."""
    from transformers import AttentionInterface

    attend = causal_attention(varlen_kernel(kernel_name))
    name = _REGISTERED_AS[kernel_name]
    AttentionInterface.register(name, functools.partial(packed_attention, attend))
    return name


def packed_attention(
    attend: Callable[..., Any],
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    *,
    scaling: float | None = None,
    key_index: Any = None,
    **bounds: Any,
) -> tuple[Any, None]:
    """transformers' side of packed attention: ``attend`` (:func:`causal_attention`'s
    result) on the (1, heads, tokens, head_dim) tensors that transformers hands over;
    returns (1, tokens, heads, head_dim). With ``key_index`` (shared prefixes, see
    ``packing``) each sequence's keys/values are those rows of the packed ones.
    """
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    if key_index is not None:
        k, v = k[key_index], v[key_index]
    return _attend_packed(attend, q, k, v, scaling, **bounds).unsqueeze(0), None


def _attend_packed(
    attend: Callable[..., Any],
    q: Any,
    k: Any,
    v: Any,
    scaling: float | None,
    *,
    cu_seq_lens_q: Any = None,
    cu_seq_lens_k: Any = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **_: Any,
) -> Any:
    """``attend`` on (tokens, heads, head_dim) tensors with the bounds transformers passes
    through (other keyword arguments it passes are ignored); keys share the queries'
    bounds where a batch has no separate ones."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise RuntimeError(
            f"{ATTENTION_NAME} attention needs cu_seq_lens_q and max_length_q; it only "
            "serves packed batches built by the qwen3_transformers backend"
        )
    cu_k = cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k
    max_k = max_length_q if max_length_k is None else max_length_k
    return attend(q, k, v, cu_seq_lens_q, cu_k, max_length_q, max_k, scaling)


def _attention_per_prompt(
    q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, scaling: float | None
) -> Any:
    """The reference path: one causal SDPA call per packed sequence.

    Kept out of torch.compile's tracing: a traced loop would specialise on every set of
    sequence boundaries and recompile for each batch.
    """
    import torch

    return torch.compiler.disable(_sdpa_per_prompt)(q, k, v, cu_q, cu_k, scaling)


def _sdpa_per_prompt(q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, scaling: float | None) -> Any:
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    q_bounds, k_bounds = cu_q.tolist(), cu_k.tolist()
    for qs, qe, ks, ke in zip(q_bounds, q_bounds[1:], k_bounds, k_bounds[1:], strict=False):
        if qe == qs:  # an empty sequence (an unused slot of a CUDA graph's static shape)
            continue
        extra = (ke - ks) - (qe - qs)  # keys before the first query (a shared prefix)
        mask = None
        if extra:  # query i sees keys 0 .. i + extra (SDPA's is_causal aligns top-left)
            mask = torch.ones(qe - qs, ke - ks, dtype=torch.bool, device=q.device).tril(extra)
        part = F.scaled_dot_product_attention(
            q[qs:qe].transpose(0, 1),
            k[ks:ke].transpose(0, 1),
            v[ks:ke].transpose(0, 1),
            attn_mask=mask,
            is_causal=extra == 0,
            scale=scaling,
            enable_gqa=True,
        )
        out[qs:qe] = part.transpose(0, 1)
    return out


def fuse_qk_norm_rope(model: Any, kernel_name: str = "torch") -> int:
    """Give each Qwen3-style self-attention module of ``model`` (per-head ``q_norm`` /
    ``k_norm``, rotary positions, no biases) a packed forward: the q, k and v projections
    as one matmul over their weights stacked (the modules' weights become views of the
    stack), then the norms, the rotation and the shared-prefix key/value gather as one
    kernel (``qk_norm_rope``), then the ``kernel_name`` varlen attention. Returns how
    many modules changed: 0 where the kernel is unavailable (no Triton) or the shapes do
    not suit it. Only for packed batches (it needs ``cu_seq_lens_q``)."""
    op = qk_norm_rope.fused_op()
    if op is None:
        return 0
    attend = causal_attention(varlen_kernel(kernel_name))
    count = 0
    for module in model.modules():
        if not _fits_fused_forward(module):
            continue
        module.qkv_proj = _stacked_linear(module, ("q_proj", "k_proj", "v_proj"))
        module.qkv_weight = module.qkv_proj.weight
        module.forward = types.MethodType(_fused_forward(op, attend), module)
        # fp8 (``fp8.fuse_norm_quant``): its q/k/v stack then takes QuantizedRows
        module.accepts_quantized_rows = True
        count += 1
    return count


def _fits_fused_forward(module: Any) -> bool:
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "head_dim")
    if not all(hasattr(module, name) for name in names):
        return False
    if any(getattr(module, p).bias is not None for p in ("q_proj", "k_proj", "v_proj")):
        return False
    eps = getattr(module.q_norm, "variance_epsilon", None)
    if eps is None or eps != getattr(module.k_norm, "variance_epsilon", None):
        return False
    return qk_norm_rope.supports(module.head_dim)


def _stacked_linear(module: Any, names: tuple[str, ...]) -> Any:
    """One bias-free ``nn.Linear`` holding the weights of ``module``'s bias-free linear
    layers ``names`` stacked (output rows in that order); each layer's weight becomes a
    view of it, so the stack costs no memory and the layers compute as before. One matmul
    over the stack instead of three: +1.3% a coalesced call on an H200
    (docs/performance.md). ``quantization: fp8`` quantises the stack as one layer."""
    import torch

    layers = [getattr(module, name) for name in names]
    stacked = torch.nn.Parameter(torch.cat([p.weight.detach() for p in layers]), False)
    start = 0
    for layer in layers:
        rows = layer.weight.shape[0]
        layer.weight = torch.nn.Parameter(stacked.detach()[start : start + rows], False)
        start += rows
    linear = torch.nn.Linear(stacked.shape[1], stacked.shape[0], bias=False, device="meta")
    linear.weight = stacked
    return linear


def _fused_forward(op: Callable[..., Any], attend: Callable[..., Any]) -> Callable[..., Any]:
    """A packed attention forward for :func:`fuse_qk_norm_rope` over ``op`` (the kernel)
    and ``attend`` (:func:`causal_attention`'s result): a closure, not a
    ``functools.partial``, so that dynamo also traces it when it compiles a whole decoder
    rather than each layer."""

    def forward(
        attn: Any,
        hidden_states: Any,
        position_embeddings: tuple[Any, Any],
        attention_mask: Any = None,
        past_key_values: Any = None,
        *,
        key_index: Any = None,
        **bounds: Any,
    ) -> tuple[Any, None]:
        widths = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
        if isinstance(hidden_states, QuantizedRows):  # fp8, from a quantising norm
            tokens = hidden_states.q.shape[0]
            qkv = attn.qkv_proj.quantized_forward(hidden_states.q, hidden_states.scale)
        else:
            tokens = hidden_states.shape[1]
            qkv = attn.qkv_proj(hidden_states[0])
        q, k, v = qkv.split(widths, -1)
        cos, sin = position_embeddings
        q, k, v = op(
            q, k, v, attn.q_norm.weight, attn.k_norm.weight, cos[0], sin[0], key_index,
            attn.q_norm.variance_epsilon,
        )  # fmt: skip
        out = _attend_packed(attend, q, k, v, attn.scaling, **bounds)
        return attn.o_proj(out.reshape(1, tokens, -1)), None

    return forward
