"""The fp8 form of :mod:`swiglu`: ``silu(x Wg^T) * (x Wu^T)`` from float8 e4m3 operands
with their scales, both matmuls and the gating in one pass (``quantization: fp8``).

``x`` arrives quantised per row (token) with a float32 scale a row, the gate and up
weights quantised per output channel with a float32 scale a channel (:mod:`..fp8`). Each
program computes a tile of both products on the fp8 tensor cores (float32 accumulators),
applies the row and channel scales, and writes only ``silu(gate) * up`` in 16 bits: the
(tokens, 2 x intermediate) products that a ``torch._scaled_mm`` of the merged gate/up
weight writes, and that the gating then reads back, never reach memory. Persistent,
tiles loaded with Hopper's TMA: an sm90+ GPU, or Triton's CPU interpreter (tests).

Triton is imported only when :func:`fused_op` is first called.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from reranker.backends.transformers.kernels import triton_support

OP_NAME = "reranker::fp8_swiglu"
# (rows, columns, depth) of a tile, pipeline stages, warps: fp8 tiles are twice as deep
# as the 16-bit kernel's (the same 128 bytes a row); a float32 result (tests) takes twice
# the shared memory to store, so fewer rows; the interpreter's tiles are small.
_TILES_FP8 = (128, 128, 128, 3, 8)
_TILES_FP8_FLOAT32_OUT = (64, 128, 128, 3, 4)
_TILES_INTERPRETED = (32, 32, 32, 1, 4)
# The shared tile order (:mod:`.tile_walk`, which imports Triton): bound by
# :func:`fused_op`, read by the kernel as a module global, where both Triton's compiler
# and its interpreter (globals only, no closures) find it.
tile_walk: Any = None
# row tiles a group of programs walks together (they share weight columns in L2)
_GROUP_ROWS = 8


def reference(
    x: Any, x_scale: Any, gate: Any, gate_scale: Any, up: Any, up_scale: Any, out_dtype: Any
) -> Any:
    """The kernel's arithmetic in torch: ``x`` (rows, hidden) fp8 with ``x_scale`` (rows,
    1); ``gate``/``up`` (intermediate, hidden) fp8 with scales (1, intermediate); float32
    products, one rounding to ``out_dtype``."""
    import torch.nn.functional as F

    xf = x.float() * x_scale
    g = xf @ (gate.float() * gate_scale.t()).t()
    u = xf @ (up.float() * up_scale.t()).t()
    return (F.silu(g) * u).to(out_dtype)


def self_check(device: Any, out_dtype: Any) -> str | None:
    """Run the kernel once on ``device`` against :func:`reference`: None where it agrees,
    else why not (Triton missing, a GPU older than Hopper, a failure, a wrong result)."""
    op = fused_op()
    if op is None:
        return "Triton is not installed here"
    import torch

    from reranker.backends.transformers import fp8

    if torch.device(device).type == "cuda" and torch.cuda.get_device_capability(device)[0] < 9:
        return "it needs a Hopper (sm90) or newer GPU: it loads tiles with TMA"
    g = torch.Generator().manual_seed(0)
    # two tiles and a partial one in every dimension on a GPU (128-wide tiles)
    x, gate, up = ((torch.randn(rows, 272, generator=g) / 4).to(device) for rows in (200, 304, 304))
    qx, sx = fp8.quantize_rows(x)
    qg, sg = fp8.quantize_rows(gate)
    qu, su = fp8.quantize_rows(up)
    want = reference(qx, sx, qg, sg.t(), qu, su.t(), out_dtype)
    return triton_support.check_against_reference(
        lambda: op(qx, sx, qg, sg.t().contiguous(), qu, su.t().contiguous(), out_dtype),
        want,
        device,
    )


@functools.cache
def fused_op() -> Callable[..., Any] | None:
    """The kernel as the torch custom op ``reranker::fp8_swiglu`` (the arguments and
    result of :func:`reference`; compiled layers call it as one opaque kernel, CUDA
    graphs capture it), or None where Triton is not importable. TMA reads ``gate`` and
    ``up`` in place: row-major (unit last stride) with a 16-byte aligned start and row
    length, as row blocks of a merged (out, in) fp8 weight whose widths are multiples of
    16 are; ``x`` and the scales are made contiguous."""
    try:
        import torch
        import triton
        import triton.language as tl
        from triton.tools.tensor_descriptor import TensorDescriptor

        from reranker.backends.transformers.kernels import tile_walk as walk
    except Exception:  # ImportError, or a Triton build that fails to load here
        return None
    global tile_walk
    tile_walk = walk

    @triton.jit(do_not_specialize=["rows"])
    def fp8_swiglu_tiles(
        x_desc,
        x_scale,
        gate_desc,
        gate_scale,
        up_desc,
        up_scale,
        out_desc,
        rows,
        columns,
        depth,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLUMNS: tl.constexpr,
        BLOCK_DEPTH: tl.constexpr,
        GROUP_ROWS: tl.constexpr,
        PROGRAMS: tl.constexpr,
        PRECISE_EVERY: tl.constexpr,
    ):
        row_tiles = tl.cdiv(rows, BLOCK_ROWS)
        column_tiles = tl.cdiv(columns, BLOCK_COLUMNS)
        for tile in range(tl.program_id(0), row_tiles * column_tiles, PROGRAMS):
            row, column = tile_walk.grouped_tile(
                tile, row_tiles, column_tiles, BLOCK_ROWS, BLOCK_COLUMNS, GROUP_ROWS
            )
            gate = tl.zeros((BLOCK_ROWS, BLOCK_COLUMNS), dtype=tl.float32)
            up = tl.zeros((BLOCK_ROWS, BLOCK_COLUMNS), dtype=tl.float32)
            for k in range(0, depth, BLOCK_DEPTH):
                x = x_desc.load([row, k])
                w_gate, w_up = gate_desc.load([column, k]), up_desc.load([column, k])
                gate = tl.dot(x, w_gate.T, gate, max_num_imprecise_acc=PRECISE_EVERY)
                up = tl.dot(x, w_up.T, up, max_num_imprecise_acc=PRECISE_EVERY)
            row_ids = row + tl.arange(0, BLOCK_ROWS)
            column_ids = column + tl.arange(0, BLOCK_COLUMNS)
            sx = tl.load(x_scale + row_ids, mask=row_ids < rows, other=0.0)[:, None]
            in_columns = column_ids < columns
            gate = gate * sx * tl.load(gate_scale + column_ids, mask=in_columns, other=0.0)[None, :]
            up = up * sx * tl.load(up_scale + column_ids, mask=in_columns, other=0.0)[None, :]
            gated = gate / (1.0 + tl.exp(-gate)) * up
            out_desc.store([row, column], gated.to(out_desc.dtype))

    in_interpreter = triton_support.interpreted()

    def fp8_swiglu(
        x: Any,
        x_scale: Any,
        gate: Any,
        gate_scale: Any,
        up: Any,
        up_scale: Any,
        out_dtype: torch.dtype,
    ) -> Any:
        rows, depth = x.shape
        columns = gate.shape[0]
        out = torch.empty(rows, columns, device=x.device, dtype=out_dtype)
        if rows == 0:
            return out
        if in_interpreter:
            tiles_config = _TILES_INTERPRETED
        else:
            tiles_config = _TILES_FP8_FLOAT32_OUT if out_dtype == torch.float32 else _TILES_FP8
        block_rows, block_columns, block_depth, stages, warps = tiles_config
        tiles = triton.cdiv(rows, block_rows) * triton.cdiv(columns, block_columns)
        sms = triton_support.persistent_programs(x.device)
        fp8_swiglu_tiles[(min(sms, tiles),)](
            TensorDescriptor.from_tensor(x.contiguous(), [block_rows, block_depth]),
            x_scale.contiguous(),
            TensorDescriptor.from_tensor(gate, [block_columns, block_depth]),
            gate_scale.contiguous(),
            TensorDescriptor.from_tensor(up, [block_columns, block_depth]),
            up_scale.contiguous(),
            TensorDescriptor.from_tensor(out, [block_rows, block_columns]),
            rows, columns, depth,
            BLOCK_ROWS=block_rows, BLOCK_COLUMNS=block_columns, BLOCK_DEPTH=block_depth,
            GROUP_ROWS=_GROUP_ROWS, PROGRAMS=sms,
            # Hopper's fp8 tensor cores add products in less than float32 precision, and
            # Triton's default there keeps that for a whole dot: add each tile's depth
            # into the float32 accumulators instead, as `_scaled_mm` does with
            # fp8_fast_accum off
            PRECISE_EVERY=block_depth,
            num_stages=stages, num_warps=warps,
        )  # fmt: skip
        return out

    op = torch.library.custom_op(
        OP_NAME,
        mutates_args=(),
        schema=(
            "(Tensor x, Tensor x_scale, Tensor gate, Tensor gate_scale, Tensor up, "
            "Tensor up_scale, ScalarType out_dtype) -> Tensor"
        ),
    )(fp8_swiglu)
    op.register_fake(
        lambda x, x_scale, gate, gate_scale, up, up_scale, out_dtype: torch.empty(
            x.shape[0], gate.shape[0], device=x.device, dtype=out_dtype
        )
    )
    return op
