"""What the transformers backend's Triton kernels (``qk_norm_rope``, ``swiglu``,
``fp8_swiglu``, ``fp8_quant``) share: whether Triton runs in its CPU interpreter, and the
startup check of a kernel against its torch reference. Imports nothing heavy at module
level."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any


def interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter here (``TRITON_INTERPRET=1``:
    slow, for tests on machines without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


@functools.cache
def persistent_programs(device: Any) -> int:
    """How many programs a persistent kernel launches at most on ``device``: one per SM
    (4 in the interpreter). Kernels take it as a constant stride, so that batch sizes do
    not compile new variants."""
    if interpreted():
        return 4
    import torch

    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def check_against_reference(
    run: Callable[[], Any], want: Any, device: Any, rtol: float = 2e-2, atol: float = 2e-2
) -> str | None:
    """Run a kernel once (``run``) and compare its output tensor, or tuple of tensors, with
    ``want`` (its reference's) within ``rtol``/``atol``; None where they agree, else why
    not. The comparison waits for the kernel, so a fault in it surfaces here too: backends
    call this at startup, so that a device Triton cannot serve falls back instead of
    failing requests."""
    import torch

    try:
        got = run()
        pairs = zip(*(t if isinstance(t, tuple) else (t,) for t in (got, want)), strict=True)
        agree = all(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol) for a, b in pairs)
    except Exception as exc:
        return f"the kernel fails on {device} ({type(exc).__name__}: {exc})"
    return None if agree else f"the kernel's results on {device} disagree with its reference"
