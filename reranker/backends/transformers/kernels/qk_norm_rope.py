"""One Triton kernel for what a packed Qwen3 attention does between its projections and
FlashAttention: RMS-normalise each query and key head (``q_norm`` / ``k_norm``), rotate
both by their token's position (RoPE: ``x * cos + rotate_half(x) * sin``) and lay keys
and values out in FlashAttention's order, which repeats a shared query prefix's rows
before each of its documents (``key_index``, see ``packing``).

transformers' code, compiled by inductor, makes three passes over those tensors (queries,
keys, then the key/value gather), writing the normalised keys out only to read them back;
this kernel reads each projection row once and writes the query, key and value rows
FlashAttention reads once. It computes in float32 and rounds once, as inductor's fused
kernels do (:func:`reference` is the same arithmetic in torch).

Triton is imported only when :func:`fused_op` is first called; without Triton or CUDA
it returns None and the caller keeps transformers' code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from reranker.backends.transformers.kernels import triton_support

OP_NAME = "reranker::qk_norm_rope"


def reference(
    q: Any,
    k: Any,
    v: Any,
    q_weight: Any,
    k_weight: Any,
    cos: Any,
    sin: Any,
    key_index: Any,
    eps: float,
) -> tuple[Any, Any, Any]:
    """The kernel's arithmetic in torch. ``q`` (tokens, q_heads * head_dim), ``k`` and
    ``v`` (tokens, kv_heads * head_dim): projections, one row per packed token; ``cos``
    and ``sin`` (tokens, head_dim): each token's rotary factors; ``key_index`` (key rows,)
    the token each key/value row is read from, or None for the tokens in order. Returns
    queries (tokens, q_heads, head_dim) and keys/values (key rows, kv_heads, head_dim)."""
    import torch

    head_dim = q_weight.shape[-1]
    rows = slice(None) if key_index is None else key_index

    def norm_rope(x: Any, weight: Any, cos: Any, sin: Any) -> Any:
        x = x.unflatten(-1, (-1, head_dim)).float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
        half = head_dim // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * cos.float()[:, None] + rotated * sin.float()[:, None]

    q_out = norm_rope(q, q_weight, cos, sin).to(q.dtype)
    k_out = norm_rope(k[rows], k_weight, cos[rows], sin[rows]).to(k.dtype)
    return q_out, k_out, v[rows].unflatten(-1, (-1, head_dim)).contiguous()


def supports(head_dim: int) -> bool:
    """Whether the kernel handles heads of ``head_dim`` (a Triton block spans half a head,
    so a power of two; any number of heads, masked up to a power of two)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def self_check(device: Any, dtype: Any) -> str | None:
    """Run the kernel once on a few rows on ``device`` in ``dtype`` against
    :func:`reference`: None where it agrees, else why not (Triton missing, the kernel
    failing to compile or launch on this device, or a wrong result). Backends call this
    at startup, so that a GPU Triton cannot serve falls back instead of failing requests."""
    op = fused_op()
    if op is None:
        return "Triton is not installed here"
    import torch

    g = torch.Generator().manual_seed(0)
    head_dim, tokens = 64, 6
    q, k, v = (torch.randn(tokens, h * head_dim, generator=g) for h in (4, 2, 2))
    weights = [1 + torch.randn(head_dim, generator=g) / 4 for _ in range(2)]
    angles = torch.randn(tokens, head_dim // 2, generator=g).repeat(1, 2)
    q, k, v, q_weight, k_weight, cos, sin = (
        t.to(device, dtype) for t in (q, k, v, *weights, angles.cos(), angles.sin())
    )
    key_index = torch.tensor([0, 1, 2, 0, 1, 3, 4, 5], device=device)  # a shared prefix
    want = reference(q, k, v, q_weight, k_weight, cos, sin, key_index, 1e-6)
    return triton_support.check_against_reference(
        lambda: op(q, k, v, q_weight, k_weight, cos, sin, key_index, 1e-6), want, device
    )


def _empty_outputs(q: Any, k: Any, q_weight: Any, key_index: Any) -> tuple[Any, Any, Any]:
    """Uninitialised (queries, keys, values) of the shapes :func:`reference` returns."""
    head_dim = q_weight.shape[-1]
    key_rows = q.shape[0] if key_index is None else key_index.shape[0]
    kv = (key_rows, k.shape[1] // head_dim, head_dim)
    queries = (q.shape[0], q.shape[1] // head_dim, head_dim)
    return q.new_empty(queries), k.new_empty(kv), k.new_empty(kv)


@functools.cache
def fused_op() -> Callable[..., tuple[Any, Any, Any]] | None:
    """The kernel as the torch custom op ``reranker::qk_norm_rope`` (same arguments and
    results as :func:`reference`; compiled layers trace through it, CUDA graphs capture
    it), or None where Triton is not importable."""
    try:
        import torch
        import triton
        import triton.language as tl
    except Exception:  # ImportError, or a Triton build that fails to load here
        return None

    # n_rows changes with every batch: not specialised (== 1, divisible by 16), so a new
    # row count never compiles a variant at request time.
    @triton.jit(do_not_specialize=["n_rows"])
    def norm_rope_rows(
        x_ptr,
        x_stride,
        weight_ptr,
        cos_ptr,
        sin_ptr,
        trig_stride,
        index_ptr,
        n_rows,
        out_ptr,
        v_ptr,
        v_stride,
        v_out_ptr,
        eps,
        HEADS: tl.constexpr,
        BLOCK_HEADS: tl.constexpr,
        HALF: tl.constexpr,
        GATHER: tl.constexpr,
        COPY_V: tl.constexpr,
        ROWS: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None, None]
        heads = tl.arange(0, BLOCK_HEADS)[None, :, None]
        cols = tl.arange(0, HALF)[None, None, :]
        in_rows = rows < n_rows
        mask = in_rows & (heads < HEADS)
        src = rows.to(tl.int64)
        if GATHER:
            src = tl.load(index_ptr + rows, mask=in_rows, other=0).to(tl.int64)
        offsets = heads * (2 * HALF) + cols
        x_row = x_ptr + src * x_stride + offsets
        x1 = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + HALF, mask=mask, other=0.0).to(tl.float32)
        mean_square = (tl.sum(x1 * x1, 2) + tl.sum(x2 * x2, 2)) / (2 * HALF)
        scale = tl.rsqrt(mean_square + eps)[:, :, None]
        x1 = x1 * scale * tl.load(weight_ptr + cols).to(tl.float32)
        x2 = x2 * scale * tl.load(weight_ptr + HALF + cols).to(tl.float32)
        trig = src * trig_stride + cols
        cos1 = tl.load(cos_ptr + trig, mask=in_rows, other=0.0).to(tl.float32)
        cos2 = tl.load(cos_ptr + trig + HALF, mask=in_rows, other=0.0).to(tl.float32)
        sin1 = tl.load(sin_ptr + trig, mask=in_rows, other=0.0).to(tl.float32)
        sin2 = tl.load(sin_ptr + trig + HALF, mask=in_rows, other=0.0).to(tl.float32)
        out_row = out_ptr + rows.to(tl.int64) * (HEADS * 2 * HALF) + offsets
        out_type = out_ptr.dtype.element_ty
        tl.store(out_row, (x1 * cos1 - x2 * sin1).to(out_type), mask=mask)
        tl.store(out_row + HALF, (x2 * cos2 + x1 * sin2).to(out_type), mask=mask)
        if COPY_V:  # the value row of the same token: same heads and width as the key
            v_row = v_ptr + src * v_stride + offsets
            v_out_row = v_out_ptr + rows.to(tl.int64) * (HEADS * 2 * HALF) + offsets
            tl.store(v_out_row, tl.load(v_row, mask=mask), mask=mask)
            tl.store(v_out_row + HALF, tl.load(v_row + HALF, mask=mask), mask=mask)

    # A row (all heads of one token) per program on a GPU, two warps each: on an H200
    # 23.2 ms a coalesced call, against 25.1 (four warps) and 24.2-25.6 (2-4 rows a
    # program). The interpreter pays per program, so there it takes many rows at once.
    rows_per_program = 64 if triton_support.interpreted() else 1

    def launch(
        x: Any, weight: Any, cos: Any, sin: Any, index: Any, out: Any, v: Any, v_out: Any,
        eps: float,
    ) -> None:  # fmt: skip
        n_rows, heads = out.shape[0], out.shape[1]
        if n_rows == 0:
            return
        norm_rope_rows[(triton.cdiv(n_rows, rows_per_program),)](
            x, x.stride(0), weight, cos, sin, cos.stride(0),
            index if index is not None else x, n_rows, out,
            v if v is not None else x, v.stride(0) if v is not None else 0,
            v_out if v_out is not None else out, eps,
            HEADS=heads, BLOCK_HEADS=triton.next_power_of_2(heads), HALF=out.shape[2] // 2,
            GATHER=index is not None, COPY_V=v is not None, ROWS=rows_per_program,
            num_warps=2,
        )  # fmt: skip

    def qk_norm_rope(
        q: Any,
        k: Any,
        v: Any,
        q_weight: Any,
        k_weight: Any,
        cos: Any,
        sin: Any,
        key_index: Any,
        eps: float,
    ) -> tuple[Any, Any, Any]:
        q_out, k_out, v_out = _empty_outputs(q, k, q_weight, key_index)
        launch(q, q_weight, cos, sin, None, q_out, None, None, eps)
        launch(k, k_weight, cos, sin, key_index, k_out, v, v_out, eps)
        return q_out, k_out, v_out

    op = torch.library.custom_op(
        OP_NAME,
        mutates_args=(),
        schema="(Tensor q, Tensor k, Tensor v, Tensor q_weight, Tensor k_weight, Tensor cos, "
        "Tensor sin, Tensor? key_index, float eps) -> (Tensor, Tensor, Tensor)",
    )(qk_norm_rope)

    op.register_fake(
        lambda q, k, v, q_weight, k_weight, cos, sin, key_index, eps: _empty_outputs(
            q, k, q_weight, key_index
        )
    )
    return op
