"""One meaning of ``device: auto`` and ``dtype: auto`` for every backend.

The same model must give the same scores on every backend of one device, so ``auto`` is
decided here once: float32 on CPU, bfloat16 on a GPU (float16 where the GPU has no
bfloat16).
"""

from __future__ import annotations

from typing import Any

DTYPE_ALIASES = {"float": "float32", "half": "float16"}


def resolve_device(name: str) -> str:
    """``auto`` becomes ``cuda`` where torch sees a GPU, else ``cpu``; others stay."""
    if name != "auto":
        return name
    return "cuda" if _torch().cuda.is_available() else "cpu"


def resolve_dtype(name: str, device_type: str) -> str:
    """The torch dtype name that ``name`` means on a device of type ``device_type``."""
    if name != "auto":
        return DTYPE_ALIASES.get(name, name)
    if device_type == "cuda":
        return "bfloat16" if _torch().cuda.is_bf16_supported() else "float16"
    return "float32"


def _torch() -> Any:
    import torch

    return torch
