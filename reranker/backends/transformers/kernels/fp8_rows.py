"""The Triton kernels behind :mod:`fp8_quant` (one program per row, the row in
registers): the quantiser, with the SiLU gating optionally in front of it, and the
RMSNorm (with the residual add optionally in front of it) followed by the quantiser.
Imported only when :mod:`fp8_quant` first asks for an op: importing it imports Triton.
"""

import triton
import triton.language as tl


@triton.jit
def store_quantized(
    x,
    out_row,
    scale_at,
    columns,
    inside,
    FP8_MAX: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    ROUND_FIRST: tl.constexpr,
):
    """A float32 row ``x`` as fp8 at ``out_row`` and its scale at ``scale_at``."""
    scale = tl.maximum(tl.max(tl.abs(x), axis=0) / FP8_MAX, MIN_SCALE)
    q = tl.clamp(x / scale, -FP8_MAX, FP8_MAX)
    if ROUND_FIRST:
        # Triton's interpreter casts to fp8 without carrying a rounded-up mantissa
        # into the exponent (127.6 becomes 64), and rounds halves up: round to e4m3's
        # grid (3 mantissa bits; below 2^-6 a fixed step of 2^-9) to nearest even
        # here, so that its cast is exact
        binade = (q.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
        step = tl.maximum(binade * 0.125, 0.001953125)  # ONE_STEP, SUBNORMAL_STEP
        q = ((q / step + 12582912.0) - 12582912.0) * step  # + 1.5 x 2^23: nearest even
    tl.store(out_row + columns, q.to(out_row.dtype.element_ty), mask=inside)
    tl.store(scale_at, scale)


@triton.jit
def quant_rows(
    src,
    src_stride,
    out,
    scales,
    width,
    GATED: tl.constexpr,
    BLOCK: tl.constexpr,
    FP8_MAX: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    ROUND_FIRST: tl.constexpr,
):
    """Row ``program_id`` of ``src`` (with ``GATED``: ``silu(gate) * up`` of its two
    halves) quantised into ``out`` and ``scales``."""
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    x = tl.load(src + row * src_stride + columns, mask=inside, other=0.0).to(tl.float32)
    if GATED:
        up = tl.load(src + row * src_stride + width + columns, mask=inside, other=0.0)
        x = x / (1.0 + tl.exp(-x)) * up.to(tl.float32)
    store_quantized(
        x, out + row * width, scales + row, columns, inside, FP8_MAX, MIN_SCALE, ROUND_FIRST
    )


@triton.jit
def norm_quant_rows(
    x_ptr,
    delta_ptr,
    sum_ptr,
    weight_ptr,
    out,
    scales,
    width,
    eps,
    HAS_DELTA: tl.constexpr,
    BLOCK: tl.constexpr,
    FP8_MAX: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    ROUND_FIRST: tl.constexpr,
):
    """Row ``program_id`` of ``x`` (with ``HAS_DELTA``: plus ``delta``, the sum stored in
    ``sum_ptr``) RMS-normed with ``weight`` and quantised into ``out`` and ``scales``."""
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    at = row * width + columns
    x = tl.load(x_ptr + at, mask=inside, other=0.0)
    if HAS_DELTA:  # the residual add, rounded to the activations' dtype as torch does
        x = (x.to(tl.float32) + tl.load(delta_ptr + at, mask=inside, other=0.0)).to(
            x_ptr.dtype.element_ty
        )
        tl.store(sum_ptr + at, x, mask=inside)
    x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / width + eps)
    weight = tl.load(weight_ptr + columns, mask=inside, other=0.0).to(tl.float32)
    # rounded as torch.rms_norm rounds: the normed row, then its product with the
    # weight, in the activations' dtype
    normed = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    normed = (normed * weight).to(x_ptr.dtype.element_ty).to(tl.float32)
    store_quantized(
        normed, out + row * width, scales + row, columns, inside, FP8_MAX, MIN_SCALE,
        ROUND_FIRST,
    )  # fmt: skip
