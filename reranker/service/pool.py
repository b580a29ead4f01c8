"""The seam between the HTTP app and a backend that runs elsewhere.

By default the app owns its backend (loaded in a thread, behind a
:class:`~reranker.service.scheduler.BatchScheduler`). Given a :class:`ScoringPool`, the
same app (routes, validation, auth, limits, error bodies, request ids, metrics) sends
each request's scoring to the pool instead: the Ray Serve replicas of
:mod:`reranker.scale`, each with its own backend and scheduler.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from reranker.core.meta import ScoreMeta
from reranker.core.protocol import ScoreRequest

PoolStatus = Literal["ok", "loading", "draining", "dead"]


class ScoringPool(Protocol):
    """Backends elsewhere that score requests (see :mod:`reranker.scale.pool`)."""

    def bind_metrics(self, metrics: Any) -> None:
        """Record per-replica counts in the app's :class:`ServiceMetrics`."""

    async def start(self) -> None:
        """Start what the pool runs in the background (called at the app's startup)."""

    async def score(self, request: ScoreRequest, timeout_s: float) -> tuple[list[float], ScoreMeta]:
        """``(scores, meta)`` of ``request``, or the typed error a local backend raises
        (:class:`~reranker.core.errors.InvalidRequest`, :class:`~reranker.core.errors.Overloaded`,
        ...). Cancelling the awaiting task drops the request wherever it is queued."""
        ...

    async def status(self) -> tuple[PoolStatus, str | None, dict[str, Any]]:
        """``(status, reason, details)``: ``ok`` while some backend can score."""
        ...

    async def close(self) -> None:
        """Release what the pool holds (called once, at the app's shutdown)."""
