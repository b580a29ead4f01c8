"""Per-token fp8 quantisation of a wide row in one pass (``quantization: fp8``), with the
SiLU gating of a gated MLP optionally in front of it.

Down's input in an fp8 MLP is ``silu(gate) * up`` quantised per token: each row's largest
magnitude, then every value divided by it. Compiled by inductor, rows as wide as an MLP's
(thousands of values) are reduced in a loop, so the (tokens, 2 x intermediate) gate/up
products are read twice (the maximum, then the division). Here one program holds a
whole row in registers: the products are read once, the fp8 row and its float32 scale
written once. The same kernel without the gating quantises any row-major matrix
(:func:`quantize_op`). A second kernel puts a decoder layer's RMSNorm (and the residual
add before it) in front of the quantisation (:func:`norm_quant_op`,
:func:`add_norm_quant_op`): inductor reduces such a row (over 1,024 values) in a loop,
reading it three times (the norm, the maximum, the division); here it is read once.
Runs on CUDA GPUs, or in Triton's CPU interpreter (tests).

Triton is imported only when an op is first asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from reranker.backends.transformers.kernels import triton_support

GATED_OP_NAME = "reranker::fp8_silu_mul_quant"
QUANT_OP_NAME = "reranker::fp8_quant_rows"
NORM_OP_NAME = "reranker::fp8_rms_norm_quant"
ADD_NORM_OP_NAME = "reranker::fp8_add_rms_norm_quant"
# one program a row: warps grow with the row (a 16,384-wide row: 16 warps, 32 values a
# thread for each of gate and up), so a row stays in registers
_MIN_WARPS, _MAX_WARPS, _VALUES_PER_WARP = 4, 16, 1024
# e4m3's rounding step: 1/8 of a normal value at most; 2^-9 below its smallest normal
ONE_STEP, SUBNORMAL_STEP = 0.125, 2.0**-9


def reference(x: Any, gated: bool) -> tuple[Any, Any]:
    """The kernels' arithmetic in torch: ``x`` (rows, width), or with ``gated`` (rows,
    2 x width) holding gate then up; ``silu(gate) * up`` in float32, then each row as
    float8 e4m3 with its float32 scale (rows, 1), as :func:`..fp8.quantize_rows`."""
    import torch.nn.functional as F

    from reranker.backends.transformers import fp8

    x = x.float()
    if gated:
        gate, up = x.chunk(2, dim=-1)
        x = F.silu(gate) * up
    return fp8.quantize_rows(x)


def norm_reference(
    x: Any, delta: Any, weight: Any, eps: float
) -> tuple[Any, Any] | tuple[Any, Any, Any]:
    """The norm kernels' arithmetic in torch: ``x + delta`` (in ``x``'s dtype; skipped
    where ``delta`` is None), its RMSNorm with ``weight`` (``torch.nn.functional.rms_norm``,
    in ``x``'s dtype), then each row as float8 e4m3 with its float32 scale. Returns
    (sum, fp8 rows, scales) with ``delta``, else (fp8 rows, scales)."""
    import torch.nn.functional as F

    from reranker.backends.transformers import fp8

    total = x if delta is None else x + delta
    normed = F.rms_norm(total, (total.shape[-1],), weight, eps)
    q, scale = fp8.quantize_rows(normed)
    return (q, scale) if delta is None else (total, q, scale)


def self_check(device: Any, dtype: Any) -> str | None:
    """Run both ops once on ``device`` with ``dtype`` input against :func:`reference`:
    None where they agree, else why not (Triton missing, a failure, a wrong result)."""
    gated_op, quant_op = gated_quant_op(), quantize_op()
    if gated_op is None or quant_op is None:
        return "Triton is not installed here"
    import torch

    g = torch.Generator().manual_seed(0)
    # as wide as the widest Qwen3-Reranker MLP (8B: 12,288; the 16,384 block, 16 warps)
    x = (torch.randn(9, 2 * 12288, generator=g) * 3).to(device=device, dtype=dtype)
    want = (reference(x, True), reference(x, False))
    try:
        got = (gated_op(x), quant_op(x))
    except Exception as exc:  # a device or build Triton cannot serve: fall back
        return f"the kernel fails on {device} ({type(exc).__name__}: {exc})"

    def values(pairs: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(q.float() for q, _ in pairs)

    def scales(pairs: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(scale for _, scale in pairs)

    # scales to float32 rounding; values to one e4m3 step (1/8 of a value; 2^-9 below
    # 2^-6), where a GPU's division or exp puts one on the other side of a rounding boundary
    return triton_support.check_against_reference(
        lambda: scales(got), scales(want), device, rtol=1e-5, atol=0.0
    ) or triton_support.check_against_reference(
        lambda: values(got), values(want), device, rtol=ONE_STEP, atol=SUBNORMAL_STEP
    )


def norm_self_check(device: Any, dtype: Any, width: int = 2560) -> str | None:
    """Run both norm ops once on ``device`` with ``dtype`` rows of ``width`` (the model's
    hidden size) against :func:`norm_reference`: None where they agree, else why not."""
    norm_op, add_op = norm_quant_op(), add_norm_quant_op()
    if norm_op is None or add_op is None:
        return "Triton is not installed here"
    import torch

    g = torch.Generator().manual_seed(0)
    x, delta = ((torch.randn(9, width, generator=g) * 3).to(device, dtype) for _ in range(2))
    weight = (torch.rand(width, generator=g) + 0.5).to(device, dtype)
    want = norm_reference(x, delta, weight, 1e-6) + norm_reference(x, None, weight, 1e-6)
    try:
        got = add_op(x, delta, weight, 1e-6) + norm_op(x, weight, 1e-6)
    except Exception as exc:  # a device or build Triton cannot serve: fall back
        return f"the kernel fails on {device} ({type(exc).__name__}: {exc})"
    # the sum and the scales to a rounding of ``dtype`` (Triton's interpreter rounds
    # 16-bit floats its own way); values to one e4m3 step
    ulp = 2 * torch.finfo(dtype).eps
    return (
        triton_support.check_against_reference(lambda: got[0], want[0], device, ulp, 0.0)
        or triton_support.check_against_reference(
            lambda: (got[2], got[4]), (want[2], want[4]), device, rtol=2 * ulp, atol=0.0
        )
        or triton_support.check_against_reference(
            lambda: (got[1].float(), got[3].float()),
            (want[1].float(), want[3].float()),
            device,
            rtol=ONE_STEP,
            atol=SUBNORMAL_STEP,
        )
    )


@functools.cache
def _rows() -> Any:
    """:mod:`fp8_rows`, the module of the Triton kernels (one program a row: the
    quantiser, the norm's), or None where Triton is not importable."""
    try:
        from reranker.backends.transformers.kernels import fp8_rows
    except Exception:  # ImportError, or a Triton build that fails to load here
        return None
    return fp8_rows


def _launch_norm(x: Any, delta: Any, weight: Any, eps: float) -> tuple[Any, ...]:
    """RMSNorm (after ``+ delta`` unless None) and quantise the rows of ``x`` (2-D)."""
    import torch
    import triton

    from reranker.backends.transformers import fp8

    rows, width = x.shape
    x = x.contiguous()
    total = torch.empty_like(x) if delta is not None else x
    out = torch.empty(rows, width, device=x.device, dtype=torch.float8_e4m3fn)
    scales = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    if rows:
        block = triton.next_power_of_2(width)
        _rows().norm_quant_rows[(rows,)](
            x, x if delta is None else delta.contiguous(), total, weight.contiguous(), out,
            scales, width, eps,
            HAS_DELTA=delta is not None, BLOCK=block, FP8_MAX=fp8.FP8_MAX,
            MIN_SCALE=fp8.MIN_SCALE, ROUND_FIRST=triton_support.interpreted(),
            num_warps=max(_MIN_WARPS, min(_MAX_WARPS, block // _VALUES_PER_WARP)),
        )  # fmt: skip
    return (out, scales) if delta is None else (total, out, scales)


@functools.cache
def norm_quant_op() -> Callable[..., Any] | None:
    """``reranker::fp8_rms_norm_quant``: ``(x, weight, eps)`` -> the RMSNorm of ``x``'s
    rows (rows, width) as fp8 rows and their scales (rows, 1), as
    :func:`norm_reference`; None where Triton is not importable."""
    if _rows() is None:
        return None
    import torch

    op = torch.library.custom_op(
        NORM_OP_NAME,
        mutates_args=(),
        schema="(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
    )(lambda x, weight, eps: _launch_norm(x, None, weight, eps))
    op.register_fake(
        lambda x, weight, eps: (
            x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty(x.shape[0], 1, dtype=torch.float32),
        )
    )
    return op


@functools.cache
def add_norm_quant_op() -> Callable[..., Any] | None:
    """``reranker::fp8_add_rms_norm_quant``: ``(x, delta, weight, eps)`` -> ``x + delta``
    and its RMSNorm as fp8 rows and their scales, as :func:`norm_reference`; None where
    Triton is not importable."""
    if _rows() is None:
        return None
    import torch

    op = torch.library.custom_op(
        ADD_NORM_OP_NAME,
        mutates_args=(),
        schema="(Tensor x, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor, Tensor)",
    )(lambda x, delta, weight, eps: _launch_norm(x, delta, weight, eps))
    op.register_fake(
        lambda x, delta, weight, eps: (
            x.new_empty(x.shape),  # contiguous, as the kernel writes it
            x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty(x.shape[0], 1, dtype=torch.float32),
        )
    )
    return op


def _width(x: Any, gated: bool) -> int:
    """Columns of the quantised rows: half of ``x``'s when gate and up sit side by side."""
    return int(x.shape[1]) // 2 if gated else int(x.shape[1])


def _launch(x: Any, gated: bool) -> tuple[Any, Any]:
    """Quantise the rows of ``x`` (2-D, unit column stride) with the kernel."""
    import torch
    import triton

    from reranker.backends.transformers import fp8

    if gated and x.shape[1] % 2:
        raise ValueError(f"gate and up side by side need an even width, not {x.shape[1]}")
    rows, width = x.shape[0], _width(x, gated)
    out = torch.empty(rows, width, device=x.device, dtype=torch.float8_e4m3fn)
    scales = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    if rows == 0:
        return out, scales
    if x.stride(1) != 1:
        x = x.contiguous()
    block = triton.next_power_of_2(width)
    warps = max(_MIN_WARPS, min(_MAX_WARPS, block // _VALUES_PER_WARP))
    _rows().quant_rows[(rows,)](
        x, x.stride(0), out, scales, width,
        GATED=gated, BLOCK=block, FP8_MAX=fp8.FP8_MAX, MIN_SCALE=fp8.MIN_SCALE,
        ROUND_FIRST=triton_support.interpreted(),
        num_warps=warps,
    )  # fmt: skip
    return out, scales


def _register(name: str, gated: bool) -> Callable[..., Any] | None:
    """The kernel as the torch custom op ``name``: (x) -> (fp8 rows, float32 scales);
    compiled layers call it as one opaque kernel, CUDA graphs capture it."""
    if _rows() is None:
        return None
    import torch

    op = torch.library.custom_op(name, mutates_args=(), schema="(Tensor x) -> (Tensor, Tensor)")(
        lambda x: _launch(x, gated)
    )

    def fake(x: Any) -> tuple[Any, Any]:
        return (
            x.new_empty(x.shape[0], _width(x, gated), dtype=torch.float8_e4m3fn),
            x.new_empty(x.shape[0], 1, dtype=torch.float32),
        )

    op.register_fake(fake)
    return op


@functools.cache
def gated_quant_op() -> Callable[..., Any] | None:
    """``reranker::fp8_silu_mul_quant``: ``x`` (rows, 2 x width), gate then up (a merged
    gate/up projection's output) -> ``silu(gate) * up`` as fp8 rows and their scales
    (rows, 1), as :func:`reference`; None where Triton is not importable."""
    return _register(GATED_OP_NAME, gated=True)


@functools.cache
def quantize_op() -> Callable[..., Any] | None:
    """``reranker::fp8_quant_rows``: ``x`` (rows, width) -> its fp8 rows and their scales
    (rows, 1), as :func:`..fp8.quantize_rows`; None where Triton is not importable."""
    return _register(QUANT_OP_NAME, gated=False)
