"""What every request goes through before and after the routes: its id, the API key, the
body's size and time limits, one access-log line and one metrics count."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from reranker.service.errors import error_body
from reranker.service.logs import log_safe, logger
from reranker.service.routes.pages import DOCS_ASSETS

if TYPE_CHECKING:
    from reranker.service.state import ServiceState

OPEN_PATHS = {"/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc"}
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def is_open(path: str) -> bool:
    """Whether ``path`` is served without the API key (ops routes, API pages, their assets)."""
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/")


def has_api_key(headers: dict[bytes, bytes], api_key: str) -> bool:
    """Whether the request's ``Authorization: Bearer`` header carries ``api_key``."""
    given = headers.get(b"authorization", b"").decode("latin-1")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    return hmac.compare_digest(token.encode(), api_key.encode())


def client_request_id(value: bytes | None) -> str | None:
    """A client's ``x-request-id``, if it is 1 to 128 printable ASCII characters (no
    spaces); anything else is replaced by a generated id."""
    text = (value or b"").decode("latin-1")
    return text if _REQUEST_ID.fullmatch(text) else None


def route_label(path: str, known_routes: set[str]) -> str:
    """The metrics label of ``path``: the route's path, one label for all API-page assets,
    ``other`` for every unknown path (a label per path asked would grow without bound)."""
    if path.startswith(DOCS_ASSETS + "/"):
        return DOCS_ASSETS
    return path if path in known_routes else "other"


def record_response(
    state: ServiceState,
    label: str,
    method: str,
    path: str,
    status: int,
    seconds: float,
    request_id: str,
) -> None:
    """Count and log one response: the metrics' count and latency, one access-log line."""
    state.metrics.requests.labels(label, str(status)).inc()
    state.metrics.latency.labels(label).observe(seconds)
    logger.info("%s %s %d %.1fms id=%s", method, log_safe(path), status, seconds * 1000, request_id)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class Refusal(NamedTuple):
    """An answer :class:`ServiceMiddleware` gives instead of the app's."""

    status: int
    message: str
    type: str
    headers: dict[str, str] | None = None


class ServiceMiddleware:
    """The outermost layer: whatever answers a request (a route, an error handler, this
    middleware's own refusals), the response gets ``x-request-id``, one access-log line
    and one metrics count with the status the client got.

    It also refuses, before the app sees the request: a missing or wrong API key (401), a
    body declared over ``max_request_bytes`` (413); and while the app reads the body: a
    body growing over ``max_request_bytes`` (413), a body not complete within
    ``body_timeout_s`` of the head (408, connection closed). For those two the app is told
    that the client disconnected and its own answer is dropped. An exception no handler
    took becomes a 500 naming the request's id (``on_unexpected``).

    Behind a proxy that gives every request an ``x-request-id`` and puts it on the
    response itself (Ray Serve's), ``behind_id_proxy`` keeps that id and adds no second
    header.
    """

    def __init__(
        self,
        app: Any,
        state: ServiceState,
        known_routes: set[str],
        on_unexpected: Callable[[Request, Exception], Any],
        behind_id_proxy: bool = False,
    ) -> None:
        self.app = app
        self.state = state
        self.known_routes = known_routes
        self.on_unexpected = on_unexpected
        self.behind_id_proxy = behind_id_proxy

    def _refuse_at_once(self, path: str, headers: dict[bytes, bytes]) -> Refusal | None:
        server = self.state.server
        if server.api_key and not is_open(path) and not has_api_key(headers, server.api_key):
            return Refusal(
                401,
                "missing or wrong API key (Authorization: Bearer <key>)",
                "authentication_error",
                {"www-authenticate": "Bearer"},
            )
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > server.max_request_bytes:
            return self._too_big()
        return None

    def _too_big(self) -> Refusal:
        limit = self.state.server.max_request_bytes
        return Refusal(413, f"request body exceeds {limit} bytes", "invalid_request_error")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        server = self.state.server
        header_list = list(scope.get("headers") or [])
        headers = dict(header_list)
        given = headers.get(b"x-request-id")
        if self.behind_id_proxy and given:
            request_id = given.decode("latin-1")
        else:
            request_id = client_request_id(given) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id
        path = scope.get("path", "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + server.body_timeout_s
        body_done = not _has_body(header_list)
        seen = 0
        status = 0  # of the response started, 0 before
        disconnected = False
        refusal: Refusal | None = None  # this middleware's answer, in place of the app's

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [] if self.behind_id_proxy else [(b"x-request-id", request_id.encode())]
                if (refusal is not None and refusal.status == 408) or self.state.stopping:
                    extra.append((b"connection", b"close"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        async def app_send(message: Message) -> None:
            # Once refused, the app's own answer is dropped; so is the one to a client gone
            # before its body arrived (nobody receives it: counted as 499, not 400).
            if refusal is None and not (disconnected and not body_done):
                await answer(message)

        async def app_receive() -> Message:
            nonlocal body_done, seen, disconnected, refusal
            if refusal is not None:
                return {"type": "http.disconnect"}
            if body_done:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    if not status:
                        refusal = Refusal(
                            408,
                            f"request body not received within {server.body_timeout_s:g} s",
                            "timeout_error",
                        )
                    return {"type": "http.disconnect"}
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > server.max_request_bytes:
                        if not status:
                            refusal = self._too_big()
                        return {"type": "http.disconnect"}
                    body_done = not message.get("more_body", False)
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        try:
            refusal = self._refuse_at_once(path, headers)
            if refusal is None:
                try:
                    await self.app(scope, app_receive, app_send)
                except Exception as exc:
                    if status:
                        raise  # the response has begun: uvicorn cuts the connection
                    if refusal is None:
                        response = await self.on_unexpected(Request(scope, receive), exc)
                        await response(scope, receive, answer)
            if refusal is not None and not status:
                body = error_body(refusal.message, refusal.type)
                await JSONResponse(body, refusal.status, headers=refusal.headers)(
                    scope, receive, answer
                )
            elif not status and not disconnected:
                logger.error("%s returned no response (id %s)", log_safe(path), request_id)
                body = error_body(f"internal server error (id {request_id})", "server_error")
                await JSONResponse(body, 500)(scope, receive, answer)
        finally:
            record_response(
                self.state,
                route_label(path, self.known_routes),
                scope.get("method", "-"),
                path,
                status or 499,  # no response: the client went away first
                time.perf_counter() - start,
                request_id,
            )
