"""Typed errors. Each names what went wrong and, where there is one, the fix."""

from __future__ import annotations


class RerankerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RerankerError):
    """The configuration (file or environment) is invalid; the message names the key."""


class UnknownBackend(RerankerError):
    """No backend of that name is registered in the ``reranker.backends`` group."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown reranker backend {name!r}; known backends: {', '.join(known) or '(none)'}"
        )


class BackendUnavailable(RerankerError):
    """The backend is registered but cannot be imported or started here."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"backend {name!r} is not usable in this Python environment: "
            f"{reason.rstrip('. ')}. "
            f"Create its virtualenv with `scripts/setup_reranker_venv.sh {name}` and start the "
            f"service with `scripts/start_reranker.sh` (it uses .venv-reranker-{name})."
        )


class ModelUnavailable(RerankerError):
    """The model weights could not be loaded (no hub access, wrong path, ...)."""


class InvalidRequest(RerankerError, ValueError):
    """The caller's input cannot be scored; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class Overloaded(RerankerError):
    """The service queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class BackendDead(RerankerError):
    """The backend can no longer score (its engine died); the service answers 503 and
    restarts it or exits, as ``on_backend_failure`` says."""
