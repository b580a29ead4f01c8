"""The backend's health as the service reports it, and what happens when the backend dies.

A :class:`BackendSupervisor` asks the backend :meth:`~reranker.core.protocol.RerankBackend.health`
every ``health_interval_s`` (a watchdog task), whenever ``/health`` or ``/ready`` is asked,
and at once after a scoring call failed. A backend that cannot score any more (its engine
process was killed, ran out of memory, crashed) is then, as ``on_backend_failure`` says:

- ``exit``: reported dead (``/health`` 503, ``/ready`` 503, requests 503) while the server
  stops; ``reranker serve`` exits with status 4 and the reason on stderr, so the
  orchestrator restarts the process;
- ``restart``: closed and loaded again in this process (``/ready`` 503 meanwhile), at most
  ``max_backend_restarts`` times in the process's life; once those are spent, ``exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prometheus_client import Counter, Gauge

from reranker.core.protocol import RerankBackend

if TYPE_CHECKING:
    from reranker.service.state import ServiceState

logger = logging.getLogger("reranker.service")

Status = Literal["ok", "loading", "dead"]


def public_model_name(model: str) -> str:
    """The model as the open routes show it: a hub id as is, a local folder by its name
    only (an unauthenticated caller learns no filesystem path)."""
    path = Path(model).expanduser()
    if model.startswith(("/", "~", ".")) or path.exists():
        return path.name or model
    return model


def probe(backend: RerankBackend) -> str | None:
    """The backend's own health; a health check that raises counts as dead."""
    try:
        return backend.health()
    except Exception as exc:
        return f"the backend's health check failed: {exc!r}"


class BackendSupervisor:
    """Watches one service's backend; reports its state; restarts it or stops the server.

    ``load_backend`` builds a backend (as at startup); ``on_fatal(reason)`` is called once
    when the service must stop (``reranker serve`` exits non-zero then).
    """

    def __init__(
        self,
        state: ServiceState,
        load_backend: Callable[[], RerankBackend],
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.settings = state.server
        self._load = load_backend
        self._on_fatal = on_fatal
        self.reason: str | None = None  # why the backend cannot score, while it cannot
        self.restarting = False
        self.restarts = 0
        self.fatal = False
        self._closing = False
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry = state.metrics.registry
        self.up = Gauge(
            "reranker_backend_up", "1 while the backend can score, else 0", registry=registry
        )
        self.restart_count = Counter(
            "reranker_backend_restarts_total", "Restarts of a dead backend", registry=registry
        )

    # -- what the routes ask -------------------------------------------------------------

    def status(self) -> tuple[Status, str | None]:
        """``("ok" | "loading" | "dead", reason)``; the reason is None when ok."""
        state = self.state
        if self.restarting:
            return "loading", (
                f"restarting the backend (attempt {self.restarts} of "
                f"{self.settings.max_backend_restarts}) after: {self.reason}"
            )
        if self.reason is not None:
            return "dead", self.reason
        if state.load_error is not None:
            return "dead", f"backend failed to load: {state.load_error}"
        if state.scheduler is None:
            return "loading", "the model is still loading"
        return "ok", None

    def unavailable(self) -> str | None:
        """Why a scoring request gets 503 now, or None when the backend can score."""
        status, reason = self.status()
        if status == "ok":
            return None
        if self.restarting or self.reason is None:
            if self.state.load_error is not None:
                return f"backend failed to load: {self.state.load_error}"
            return f"{reason}; retry shortly"
        exits = self.fatal or self.settings.on_backend_failure == "exit"
        then = "the service is stopping" if exits else "it is being restarted"
        return f"the backend cannot score ({reason}); {then}"

    async def refresh(self) -> None:
        """Ask the backend now (``/health``, ``/ready``, a failed request); a dead one wakes
        the watchdog, which restarts it or stops the server."""
        backend = self.state.backend
        if backend is None or self.reason is not None or self.restarting:
            return
        reason = await asyncio.to_thread(probe, backend)
        if reason is not None and backend is self.state.backend and self.reason is None:
            self._mark_dead(reason)

    # -- the watchdog --------------------------------------------------------------------

    def start(self) -> None:
        """Start the watchdog task (in the server's event loop)."""
        self._task = asyncio.create_task(self._watch(), name="backend-watchdog")

    async def stop(self) -> None:
        """Stop watching (shutdown); a restart under way closes what it loads."""
        with self._lock:
            self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _mark_dead(self, reason: str) -> None:
        self.reason = reason
        self.up.set(0)
        self._wake.set()

    async def _watch(self) -> None:
        interval = self.settings.health_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self.fatal or self.restarting:
                continue
            if self.reason is None:
                await self.refresh()
                if self.reason is None:
                    self.up.set(1 if self.state.scheduler is not None else 0)
                    continue
            await self._handle(self.reason)

    async def _handle(self, reason: str) -> None:
        logger.error("backend %s can no longer score: %s", self.state.backend_name, reason)
        limit = self.settings.max_backend_restarts
        while (
            self.settings.on_backend_failure == "restart"
            and self.restarts < limit
            and not self._closing
        ):
            self.restarts += 1
            self.restart_count.inc()
            self.restarting = True
            logger.warning(
                "restarting backend %s (attempt %d of %d)",
                self.state.backend_name,
                self.restarts,
                limit,
            )
            try:
                await asyncio.to_thread(self._replace)
            except Exception as exc:
                self.reason = f"restart {self.restarts} of {limit} failed: {exc} (after: {reason})"
                logger.error("backend %s: %s", self.state.backend_name, self.reason)
                continue
            finally:
                self.restarting = False
            if self._closing:
                return
            self.reason = None
            self.up.set(1)
            logger.info("backend %s restarted and ready", self.state.backend_name)
            return
        if self._closing:
            return
        self.fatal = True
        why = self.reason or reason
        if self.settings.on_backend_failure == "restart":
            why = f"{why} ({self.restarts} restarts spent, max_backend_restarts {limit})"
            self.reason = why
        logger.error("stopping the service: backend %s is dead: %s", self.state.backend_name, why)
        if self._on_fatal is not None:
            self._on_fatal(why)

    def _replace(self) -> None:
        """Close the dead backend and load a new one (in a worker thread)."""
        state = self.state
        old_scheduler, old_backend = state.scheduler, state.backend
        if old_scheduler is not None:
            old_scheduler.close(5.0)  # its requests fail at once: the backend is dead
        if old_backend is not None:
            try:
                old_backend.close()
            except Exception as exc:  # what is left of a dead engine
                logger.warning("closing the dead backend: %r", exc)
        backend = self._load()
        with self._lock:
            if not self._closing:
                state.attach(backend)
                return
        backend.close()  # the server stopped while this backend was loading
