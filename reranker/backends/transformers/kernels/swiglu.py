"""One Triton kernel for the first half of a SiLU-gated MLP (Qwen3's): ``silu(x Wg^T) *
(x Wu^T)``, both matmuls and the gating in one pass.

transformers' code runs the gate and up projections as cuBLAS GEMMs that write both
(tokens, intermediate) products out, then a pass that reads them back to write their
gated product: at Qwen3-0.6B's sizes that pass moves 1.5x the bytes of the product it
writes and ran at the GPU's memory bandwidth (~20 ms of a ~360 ms coalesced benchmark
call on an H200). Here each program computes a tile of both products in float32
accumulators from the same input rows and writes only ``silu(gate) * up``, rounded once
(more exact than rounding both products first). It is a persistent kernel that loads its
tiles with the Hopper tensor-memory accelerator (TMA), so it needs an sm90+ GPU, or
Triton's CPU interpreter (tests, float32).

Triton is imported only when :func:`fused_op` is first called; without it, or on a GPU it
cannot serve, the caller keeps transformers' MLP code.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from reranker.backends.transformers.kernels import triton_support

OP_NAME = "reranker::swiglu"
# (rows, columns, depth) of a tile, pipeline stages, warps. 16-bit: the best of the tile
# shapes measured on an H100 and on an H200 (docs/bench-data/*-profile-swiglu.txt and
# *-profile-carry-residuals.txt); float32 (tests, the interpreter): small tiles, exact
# (IEEE) products.
_TILES_16BIT = (128, 128, 64, 3, 8)
_TILES_FLOAT32 = (64, 64, 32, 2, 4)
# The shared tile order (:mod:`.tile_walk`, which imports Triton): bound by
# :func:`fused_op`, read by the kernel as a module global, where both Triton's compiler
# and its interpreter (globals only, no closures) find it.
tile_walk: Any = None
# row tiles a group of programs walks together (they share weight columns in L2)
_GROUP_ROWS = 8


def reference(x: Any, gate_weight: Any, up_weight: Any) -> Any:
    """The kernel's arithmetic in torch: ``x`` (rows, hidden), the weights (intermediate,
    hidden) as ``nn.Linear`` holds them; float32 products, one rounding to ``x``'s dtype."""
    import torch.nn.functional as F

    gate = x.float() @ gate_weight.float().t()
    return (F.silu(gate) * (x.float() @ up_weight.float().t())).to(x.dtype)


def supports(hidden: int, intermediate: int, itemsize: int) -> bool:
    """Whether the kernel takes these sizes: TMA reads rows whose byte length is a
    multiple of 16."""
    return hidden * itemsize % 16 == 0 and intermediate * itemsize % 16 == 0


def self_check(device: Any, dtype: Any) -> str | None:
    """Run the kernel once on ``device`` in ``dtype`` against :func:`reference`: None
    where it agrees, else why not (Triton missing, a GPU older than Hopper, the kernel
    failing to compile or launch, or a wrong result)."""
    op = fused_op()
    if op is None:
        return "Triton is not installed here"
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.get_device_capability(device)[0] < 9:
        return "it needs a Hopper (sm90) or newer GPU: it loads tiles with TMA"
    g = torch.Generator().manual_seed(0)
    x, gate_weight, up_weight = (
        (torch.randn(rows, 64, generator=g) / 4).to(device, dtype) for rows in (70, 96, 96)
    )
    want = reference(x, gate_weight, up_weight)
    return triton_support.check_against_reference(
        lambda: op(x, gate_weight, up_weight), want, device
    )


def fuse_mlps(model: Any) -> int:
    """Give each SiLU-gated, bias-free MLP module of ``model`` (``gate_proj``,
    ``up_proj``, ``down_proj``, ``act_fn``) a forward that runs this kernel, then
    ``down_proj``; returns how many changed (0 without Triton). The weights stay where
    they are."""
    op = fused_op()
    if op is None:
        return 0
    count = 0
    for module in model.modules():
        if _fits(module):
            module.forward = types.MethodType(_fused_forward(op), module)
            count += 1
    return count


def _fits(module: Any) -> bool:
    names = ("gate_proj", "up_proj", "down_proj")
    if not all(getattr(getattr(module, name, None), "bias", 0) is None for name in names):
        return False  # a layer missing, or one with a bias
    if type(getattr(module, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation"):
        return False
    gate = module.gate_proj.weight
    return supports(gate.shape[1], gate.shape[0], gate.element_size())


def _fused_forward(op: Callable[..., Any]) -> Callable[..., Any]:
    """An MLP forward over ``op`` (a closure, not a partial: dynamo traces it)."""

    def forward(mlp: Any, x: Any) -> Any:
        gated = op(x.reshape(-1, x.shape[-1]), mlp.gate_proj.weight, mlp.up_proj.weight)
        return mlp.down_proj(gated).view(*x.shape[:-1], -1)

    return forward


@functools.cache
def fused_op() -> Callable[..., Any] | None:
    """The kernel as the torch custom op ``reranker::swiglu`` (same arguments and result
    as :func:`reference`; compiled layers call it as one opaque kernel, CUDA graphs
    capture it), or None where Triton is not importable."""
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

    # The row count changes with every batch: Triton would otherwise compile a variant
    # for rows == 1 and one for rows divisible by 16, the first time a request has them.
    @triton.jit(do_not_specialize=["rows"])
    def swiglu_tiles(
        x_desc,
        gate_desc,
        up_desc,
        out_desc,
        rows,
        columns,
        depth,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLUMNS: tl.constexpr,
        BLOCK_DEPTH: tl.constexpr,
        GROUP_ROWS: tl.constexpr,
        PROGRAMS: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        row_tiles = tl.cdiv(rows, BLOCK_ROWS)
        column_tiles = tl.cdiv(columns, BLOCK_COLUMNS)
        # persistent: each program walks tiles PROGRAMS apart, in grouped order
        for tile in range(tl.program_id(0), row_tiles * column_tiles, PROGRAMS):
            row, column = tile_walk.grouped_tile(
                tile, row_tiles, column_tiles, BLOCK_ROWS, BLOCK_COLUMNS, GROUP_ROWS
            )
            gate = tl.zeros((BLOCK_ROWS, BLOCK_COLUMNS), dtype=tl.float32)
            up = tl.zeros((BLOCK_ROWS, BLOCK_COLUMNS), dtype=tl.float32)
            for k in range(0, depth, BLOCK_DEPTH):
                x = x_desc.load([row, k])
                gate = tl.dot(x, gate_desc.load([column, k]).T, gate, input_precision=PRECISION)
                up = tl.dot(x, up_desc.load([column, k]).T, up, input_precision=PRECISION)
            gated = gate / (1.0 + tl.exp(-gate)) * up
            out_desc.store([row, column], gated.to(out_desc.dtype))

    # read once, not per launch: launches sit on the host's path of every layer
    in_interpreter = triton_support.interpreted()

    def swiglu(x: Any, gate_weight: Any, up_weight: Any) -> Any:
        rows, depth = x.shape
        columns = gate_weight.shape[0]
        out = x.new_empty(rows, columns)
        if rows == 0:
            return out
        x = x.contiguous()  # TMA reads rows with unit stride
        wide = x.dtype == torch.float32 or in_interpreter
        block_rows, block_columns, block_depth, stages, warps = (
            _TILES_FLOAT32 if wide else _TILES_16BIT
        )
        tiles = triton.cdiv(rows, block_rows) * triton.cdiv(columns, block_columns)
        # one program per SM, fewer where there are fewer tiles: the stride stays the SM
        # count (a constant, so that batch sizes do not recompile the kernel)
        sms = triton_support.persistent_programs(x.device)
        swiglu_tiles[(min(sms, tiles),)](
            TensorDescriptor.from_tensor(x, [block_rows, block_depth]),
            TensorDescriptor.from_tensor(gate_weight, [block_columns, block_depth]),
            TensorDescriptor.from_tensor(up_weight, [block_columns, block_depth]),
            TensorDescriptor.from_tensor(out, [block_rows, block_columns]),
            rows, columns, depth,
            BLOCK_ROWS=block_rows, BLOCK_COLUMNS=block_columns, BLOCK_DEPTH=block_depth,
            GROUP_ROWS=_GROUP_ROWS, PROGRAMS=sms,
            PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            num_stages=stages, num_warps=warps,
        )  # fmt: skip
        return out

    op = torch.library.custom_op(
        OP_NAME,
        mutates_args=(),
        schema="(Tensor x, Tensor gate_weight, Tensor up_weight) -> Tensor",
    )(swiglu)
    op.register_fake(
        lambda x, gate_weight, up_weight: x.new_empty(x.shape[0], gate_weight.shape[0])
    )
    return op
