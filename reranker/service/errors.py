"""The service's errors as the client sees them: one JSON body shape, one status per error.

Every error answer is ``{"error": {"message", "type", "param"}}``. :class:`ErrorHandlers`
maps what a request can raise to it: a body that fails validation (400), an HTTP error
of the framework (404, 405, ...), a typed :class:`~reranker.core.errors.RerankerError`
(400, 429, 503, 504, 499), and anything else (500 naming the request's id, or 503 when
the backend died under the request).
"""

from __future__ import annotations

import math
import re
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reranker.core.errors import BackendDead, InvalidRequest, Overloaded, RerankerError
from reranker.service.logs import log_safe, logger

if TYPE_CHECKING:
    from reranker.service.state import Service


class ServiceUnavailable(RerankerError):
    """The backend is not loaded (yet, or it failed), or no replica could score."""


class ScoringTimeout(RerankerError):
    """A request waited longer than ``request_timeout_s``."""


class ClientDisconnected(RerankerError):
    """The client closed the connection before its scores were ready (answered 499)."""


def error_body(message: str, type_: str, param: str | None = None, **extra: Any) -> dict:
    """The one error shape: ``{"error": {"message", "type", "param"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, **extra}}


def json_error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error answer: :func:`error_body` with ``status`` and ``headers``."""
    return JSONResponse(error_body(message, type_, param, **extra), status, headers=headers)


_SNAKE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = {"str", "int", "float", "bool", "bytes", "none", "dict", "list"}


def error_location(loc: Any) -> str:
    """A validation error's place as a client wrote it: ``documents[0]``, ``docs[3]``.

    Drops ``body`` and the union branches pydantic names in locations (``str``,
    ``DocumentObject``, ``list[str]``, ...): request fields are snake_case names.
    """
    out = ""
    for part in loc or ():
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and _SNAKE_NAME.fullmatch(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


def is_json_content_type(value: str | None) -> bool:
    """``application/json`` or ``application/<something>+json`` (parameters allowed)."""
    kind = (value or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


class ErrorHandlers:
    """The app's exception handlers; ``on_unexpected`` also answers for the middleware
    what no handler took."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def install(self, app: FastAPI) -> None:
        """Register the handlers on ``app``."""
        app.add_exception_handler(RequestValidationError, self.on_validation_error)  # type: ignore[arg-type]
        app.add_exception_handler(StarletteHTTPException, self.on_http_error)  # type: ignore[arg-type]
        app.add_exception_handler(RerankerError, self.on_reranker_error)  # type: ignore[arg-type]

    async def on_validation_error(
        self, request: Request, exc: RequestValidationError
    ) -> JSONResponse:
        """400 with the first thing wrong in the body, named as the client wrote it."""
        errors = list(exc.errors()) or [{"msg": "invalid request", "loc": ()}]
        first = errors[0]
        if first.get("type") == "json_invalid":
            return json_error(400, "request body is not valid JSON", "invalid_request_error")
        if tuple(first.get("loc", ())) == ("body",):  # the body as a whole
            if not is_json_content_type(request.headers.get("content-type")):
                message = "request body must be JSON (content-type: application/json)"
            elif first.get("type") == "missing":
                message = "request body is empty: send a JSON object"
            else:
                message = "request body must be a JSON object"
            return json_error(400, message, "invalid_request_error")
        # A union reports one error per branch tried: the one that got deepest into the
        # value (``queries: [3]`` -> the list branch) says best what is wrong.
        field = first.get("loc", ())[:2]
        same_field = [e for e in errors if tuple(e.get("loc", ())[:2]) == tuple(field)]
        chosen = max(same_field, key=lambda e: len(e.get("loc", ())))
        where = error_location(chosen.get("loc", ()))
        msg = str(chosen.get("msg", "invalid request")).removeprefix("Value error, ")
        return json_error(
            400, f"{where}: {msg}" if where else msg, "invalid_request_error", where or None
        )

    async def on_http_error(self, request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The framework's HTTP errors (unknown path, wrong method) in the error shape."""
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return json_error(exc.status_code, str(exc.detail), type_)

    async def on_reranker_error(self, request: Request, exc: RerankerError) -> JSONResponse:
        """A typed error's status: 400, 429 (with ``Retry-After``), 503, 504 or 499."""
        if isinstance(exc, InvalidRequest):
            return json_error(400, str(exc), "invalid_request_error", exc.param)
        if isinstance(exc, Overloaded):
            self.service.state.metrics.overloaded.inc()
            return json_error(
                429,
                str(exc),
                "rate_limit_error",
                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
            )
        if isinstance(exc, ServiceUnavailable):
            return json_error(503, str(exc), "service_unavailable", headers={"Retry-After": "5"})
        if isinstance(exc, BackendDead):
            return await self.backend_dead(request, exc)
        if isinstance(exc, ScoringTimeout):
            return json_error(504, str(exc), "timeout_error")
        if isinstance(exc, ClientDisconnected):  # nobody reads it: logged and counted as 499
            return json_error(499, str(exc), "client_closed_request")
        return await self.on_unexpected(request, exc)

    async def on_unexpected(self, request: Request, exc: Exception) -> JSONResponse:
        """500 naming the request's id (logged with the traceback), or 503 when the
        backend died under the request."""
        supervisor = self.service.supervisor
        await supervisor.refresh()  # did the backend die under this request?
        if supervisor.reason is not None:
            return await self.backend_dead(request, exc)
        # The request's id (x-request-id, the access log's id=): one id to look up.
        error_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        logger.exception("internal error %s on %s", error_id, log_safe(request.url.path))
        return json_error(
            500, f"internal server error (id {error_id})", "server_error", id=error_id
        )

    async def backend_dead(self, request: Request, exc: Exception) -> JSONResponse:
        """503 for a request that failed because the backend died (the watchdog, woken by
        the health check, restarts it or stops the server)."""
        supervisor = self.service.supervisor
        await supervisor.refresh()
        logger.warning(
            "request %s on %s: the backend died under it: %s",
            getattr(request.state, "request_id", "-"),
            log_safe(request.url.path),
            exc,
        )
        message = supervisor.unavailable() or f"the backend failed under this request: {exc}"
        return json_error(503, message, "service_unavailable", headers={"Retry-After": "5"})
