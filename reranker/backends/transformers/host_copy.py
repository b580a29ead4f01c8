"""Reading a call's results back from the device without holding up the host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def start_copy_to_host(torch: Any, outputs: list[Any], device: Any) -> Callable[[], list[float]]:
    """Queue the copy of ``outputs`` (1-D float tensors on ``device``) to the host, in
    order, as one list; the function returned waits for the copy and returns the values.

    On CUDA the copy goes to pinned memory behind an event, so the host is free until it
    asks for the values, and waiting for them lets other Python threads run. Elsewhere
    the values are read when asked for.
    """
    if not outputs:
        return list
    values = torch.cat(outputs).float()
    if torch.device(device).type != "cuda":
        return values.tolist  # type: ignore[no-any-return]
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(device))

    def read() -> list[float]:
        copied.synchronize()
        return host.tolist()  # type: ignore[no-any-return]

    return read
