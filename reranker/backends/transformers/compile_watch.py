"""Compilations after startup, counted and logged.

A backend compiles and warms up every shape its requests can take before it serves
(:mod:`reranker.backends.transformers.warm_up`); a torch.compile (re)compilation after
that costs a request seconds. :data:`WATCH` counts every dynamo compilation that starts
while no backend is starting (:meth:`CompileWatch.starting`), through dynamo's compile
callbacks, and :meth:`CompileWatch.report` logs each one as a WARNING with the reason
dynamo gives (the guard that failed, or a function compiled for the first time) from its
compilation metrics. Process-wide, as dynamo's caches are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)


def _dynamo_metrics() -> list[Any]:
    """dynamo's recent compilation records (``CompilationMetrics``), oldest first; empty
    where this torch keeps none."""
    try:
        from torch._dynamo.utils import get_compilation_metrics
    except ImportError:
        return []
    return list(get_compilation_metrics())


def describe(record: Any) -> str:
    """One compilation record as ``function (file:line): reason, seconds``."""
    where = f"{getattr(record, 'co_name', '?')} ({getattr(record, 'co_filename', '?')}:"
    where += f"{getattr(record, 'co_firstlineno', '?')})"
    reason = getattr(record, "recompile_reason", None) or "first compilation of this function"
    seconds = getattr(record, "entire_frame_compile_time_s", None)
    took = f", {seconds:.2f} s" if isinstance(seconds, int | float) else ""
    return f"{where}: {reason}{took}"


class CompileWatch:
    """Counts dynamo compilations after startup; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starting = 0  # backends starting now: their compilations are expected
        self._installed = False
        self.recompiles = 0  # compilations started while no backend was starting
        self._unreported = 0
        self._seen: set[int] = set()  # ids of the compilation records already reported

    def install(self) -> bool:
        """Register the compile callback with dynamo (once); False where this torch has
        no compile callbacks (compilations are then seen from its records only)."""
        with self._lock:
            if self._installed:
                return True
            try:
                from torch._dynamo.callback import callback_handler
            except ImportError:
                return False
            callback_handler.register_start_callback(self._on_compile_start)
            self._installed = True
            return True

    def _on_compile_start(self, *args: Any) -> None:
        trigger = getattr(args[0], "callback_trigger", None) if args else None
        if trigger is not None and getattr(trigger, "name", "DYNAMO") != "DYNAMO":
            return  # lazy backward / autotuning / cudagraph recording: not a compilation
        with self._lock:
            if self._starting == 0:
                self.recompiles += 1
                self._unreported += 1

    @contextmanager
    def starting(self) -> Iterator[None]:
        """While a backend starts (compiles, warms up): its compilations are not counted,
        and are marked as seen when it is done."""
        self.install()
        with self._lock:
            self._starting += 1
        try:
            yield
        finally:
            records = _dynamo_metrics()
            with self._lock:
                self._starting -= 1
                self._seen.update(id(r) for r in records)

    def report(self) -> int:
        """Log each compilation counted since the last report (a WARNING naming the
        function and dynamo's reason); returns how many."""
        with self._lock:
            if self._unreported == 0:
                return 0
            count, self._unreported = self._unreported, 0
            records = [r for r in _dynamo_metrics() if id(r) not in self._seen]
            self._seen.update(id(r) for r in records)
        for record in records[-count:]:
            logger.warning(
                "torch.compile recompiled after startup (a request paid for it): %s; "
                "this shape was not warmed up",
                describe(record),
            )
        if len(records) < count:
            logger.warning(
                "torch.compile compiled %d time(s) after startup (a request paid for it); "
                "set TORCH_LOGS=recompiles for the reasons",
                count - len(records),
            )
        return count


WATCH = CompileWatch()
