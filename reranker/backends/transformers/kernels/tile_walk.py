"""The tile order the persistent matmul kernels (``swiglu``, ``fp8_swiglu``) share, as a
Triton function they inline. Imports Triton: import it only where a kernel is defined."""

from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401 (Triton's interpreter wants it in the globals)


@triton.jit
def grouped_tile(tile, row_tiles, column_tiles, BLOCK_ROWS, BLOCK_COLUMNS, GROUP_ROWS):  # type: ignore[no-untyped-def]
    """The first (row, column) of the ``tile``-th output tile when tiles are walked in
    groups of ``GROUP_ROWS`` row tiles, column by column: programs running together then
    share input rows and weight columns in L2."""
    tiles_per_group = GROUP_ROWS * column_tiles
    first_row_tile = tile // tiles_per_group * GROUP_ROWS
    group_rows = min(row_tiles - first_row_tile, GROUP_ROWS)
    row = (first_row_tile + tile % group_rows) * BLOCK_ROWS
    column = (tile % tiles_per_group) // group_rows * BLOCK_COLUMNS
    return row, column
