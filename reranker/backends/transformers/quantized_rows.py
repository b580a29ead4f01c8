"""Activations handed from a fused norm to an fp8 matmul already quantised."""

from __future__ import annotations

from typing import Any, NamedTuple


class QuantizedRows(NamedTuple):
    """A layer's normed activations as an fp8 matmul takes them: ``q`` (rows, width)
    float8 e4m3 and ``scale`` (rows, 1) float32, one row per token, and ``shape``, the
    shape of the 16-bit tensor they stand for (its leading dims hold the rows).

    A decoder layer whose RMSNorm quantises as it normalises (``fp8.fuse_norm_quant``)
    passes these to its attention and MLP instead of the 16-bit tensor; modules that
    take them say so with ``accepts_quantized_rows``."""

    q: Any
    scale: Any
    shape: Any
