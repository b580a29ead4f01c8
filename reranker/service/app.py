"""FastAPI app factory: /rerank (Cohere/Jina), /score (vLLM), /v1/score_with_meta, ops.

The backend is loaded in a background thread at startup (``/ready`` answers 503 until it
is in), owned by a :class:`BatchScheduler`, and closed on shutdown after the queue drains.
The API pages (``/docs``, ``/redoc``) load their scripts and styles from this server
(``/docs/assets``, the files the ``fastapi-offline`` package ships), never from a CDN.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from reranker.config import ServerSettings
from reranker.core.errors import BackendDead, InvalidRequest, Overloaded, RerankerError
from reranker.core.meta import ScoreMeta
from reranker.core.protocol import RerankBackend, ScoreRequest, rank_order
from reranker.service.health import BackendSupervisor, public_model_name
from reranker.service.metrics import ServiceMetrics
from reranker.service.pool import ScoringPool
from reranker.service.scheduler import BatchScheduler, RequestExpired, Ticket
from reranker.service.schemas import RerankBody, ScoreBody, ScoreWithMetaBody

logger = logging.getLogger("reranker.service")
DOCS_ASSETS = "/docs/assets"
"""Where the API pages' scripts, styles and icon are served (no API key needed)."""
DOCS_ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
OPEN_PATHS = {"/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc"}


def docs_assets_dir() -> Path:
    """The Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package."""
    directory = Path(fastapi_offline.__file__).parent / "static"
    missing = [f for f in DOCS_ASSET_FILES if not (directory / f).is_file()]
    if missing:
        raise RuntimeError(
            f"fastapi-offline at {directory} lacks {', '.join(missing)}: reinstall the "
            "service extra (scripts/setup_reranker_venv.sh)"
        )
    return directory


def is_open(path: str) -> bool:
    """Whether ``path`` is served without the API key (ops routes, API pages, their assets)."""
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/")


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


def error_body(message: str, type_: str, param: str | None = None, **extra: Any) -> dict:
    """The one error shape: ``{"error": {"message", "type", "param"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, **extra}}


_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def client_request_id(value: bytes | None) -> str | None:
    """A client's ``x-request-id``, if it is 1 to 128 printable ASCII characters (no
    spaces); anything else is replaced by a generated id."""
    text = (value or b"").decode("latin-1")
    return text if _REQUEST_ID.fullmatch(text) else None


def log_safe(text: str) -> str:
    """``text`` for a log line: control and other unprintable characters (and ``\\``)
    escaped as ``\\xNN`` / ``\\uNNNN``, so that a client cannot forge or split log lines."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


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
        if server.api_key and not is_open(path):
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), server.api_key.encode()):
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
                if refusal is not None and refusal.status == 408:
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


class ServiceState:
    """What the routes share: settings, backend (once loaded), scheduler, metrics."""

    def __init__(self, server: ServerSettings, backend_name: str, model: str) -> None:
        self.server = server
        self.backend_name = backend_name
        self.model = model
        self.metrics = ServiceMetrics()
        self.backend: RerankBackend | None = None
        self.scheduler: BatchScheduler | None = None
        self.load_error: BaseException | None = None

    def attach(self, backend: RerankBackend) -> None:
        """Put a loaded backend behind a scheduler."""
        self.backend = backend
        self.model = backend.model_name
        self.scheduler = BatchScheduler(
            backend,
            max_queue_docs=self.server.max_queue_docs,
            batch_wait_ms=self.server.batch_wait_ms,
            on_batch=self.metrics.observe_batch,
            max_call_tokens=self.server.max_call_tokens,
            max_queue_tokens=self.server.max_queue_tokens,
            max_queue_chars=self.server.max_queue_chars,
            on_drop=self.metrics.observe_drop,
            on_isolate=self.metrics.isolation_retries.inc,
        )
        self.metrics.bind_scheduler(self.scheduler)


def create_app(
    load_backend: Callable[[], RerankBackend] | None,
    server: ServerSettings | None = None,
    backend_name: str = "",
    model: str = "",
    on_load_error: Callable[[BaseException], None] | None = None,
    on_backend_failure: Callable[[str], None] | None = None,
    pool: ScoringPool | None = None,
) -> FastAPI:
    """Build the FastAPI app. ``load_backend`` runs in a thread at startup.

    ``on_load_error(exc)`` is called when the first load fails, ``on_backend_failure(reason)``
    when a backend that died while serving is not restarted (``on_backend_failure: exit``,
    or its restarts are spent): the server should stop then (``reranker serve`` does).

    With a ``pool`` (and no ``load_backend``) the app loads nothing: it scores through the
    pool's backends (Ray Serve replicas), and ``/health`` and ``/ready`` report theirs.
    """
    if (load_backend is None) == (pool is None):
        raise ValueError("create_app takes load_backend or pool, one of the two")
    state = ServiceState(server or ServerSettings(), backend_name, model)
    supervisor = BackendSupervisor(state, load_backend or _no_backend, on_backend_failure)
    if pool is not None:
        pool.bind_metrics(state.metrics)

    def load() -> None:
        assert load_backend is not None
        try:
            state.attach(load_backend())
            logger.info("backend %s ready (model %s)", state.backend_name, state.model)
        except BaseException as exc:
            state.load_error = exc
            logger.error("backend %s failed to load: %s", state.backend_name, exc)
            if on_load_error:
                on_load_error(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is not None:
            await pool.start()
            yield
            await pool.close()
            return
        threading.Thread(target=load, name="backend-loader", daemon=True).start()
        supervisor.start()
        yield
        # Shutdown: uvicorn has stopped taking requests and drained in-flight ones (for at
        # most shutdown_timeout_s): what is still queued has nobody waiting for it.
        await supervisor.stop()
        if state.scheduler:
            await asyncio.to_thread(state.scheduler.close, 5.0)
        if state.backend:
            state.backend.close()

    app = FastAPI(
        title="reranker",
        version=__import__("reranker").__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    app.state.supervisor = supervisor
    known_routes: set[str] = set()

    def json_error(
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> JSONResponse:
        return JSONResponse(error_body(message, type_, param, **extra), status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
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

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return json_error(exc.status_code, str(exc.detail), type_)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        await supervisor.refresh()  # did the backend die under this request?
        if supervisor.reason is not None:
            return await backend_dead(request, exc)
        # The request's id (x-request-id, the access log's id=): one id to look up.
        error_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        logger.exception("internal error %s on %s", error_id, log_safe(request.url.path))
        return json_error(
            500, f"internal server error (id {error_id})", "server_error", id=error_id
        )

    async def run(
        request: ScoreRequest, http: Request | None = None
    ) -> tuple[list[float], ScoreMeta]:
        """Score ``request`` through the scheduler. The request is dropped unscored (and
        its queued work cancelled) when its deadline passes or the client of ``http``
        disconnects; a task cancelled while waiting cancels it too."""
        timeout = state.server.request_timeout_s
        future: Ticket | None = None
        if pool is not None:
            answer: asyncio.Future[Any] = asyncio.ensure_future(pool.score(request, timeout))
        else:
            unavailable = supervisor.unavailable()  # loading, restarting, dead: 503
            if unavailable is not None:
                raise ServiceUnavailable(unavailable)
            if state.scheduler is None:
                if state.load_error is not None:
                    raise ServiceUnavailable(f"backend failed to load: {state.load_error}")
                raise ServiceUnavailable("the model is still loading; retry shortly")
            future = state.scheduler.submit(request, timeout_s=timeout)
            answer = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(client_gone(http)) if http is not None else None
        waiting: list[asyncio.Future[Any]] = [answer] if gone is None else [answer, gone]
        reason = "cancelled"
        try:
            done, _ = await asyncio.wait(
                waiting,
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if answer not in done:
                reason = "disconnected" if gone in done else "expired"
                if reason == "disconnected":
                    raise ClientDisconnected("the client closed the connection")
                raise ScoringTimeout(f"scoring took longer than {timeout} s")
            try:
                scores, meta = answer.result()
            except RequestExpired:
                raise ScoringTimeout(f"scoring took longer than {timeout} s") from None
        finally:
            if future is not None and not future.done():
                future.cancel_for(reason)  # the scheduler drops it unscored
            if not answer.done():
                answer.cancel()
            if gone is not None and not gone.done():
                gone.cancel()
        state.metrics.documents.inc(meta["usable_docs"])
        state.metrics.tokens.inc(meta["scored_tokens"])
        state.metrics.dedup_ratio.observe(meta["dedup_ratio"])
        return scores, meta

    def check_limits(query: str | None, n_docs: int, instruction: str | None = None) -> None:
        if n_docs > state.server.max_docs_per_request:
            raise InvalidRequest(
                f"{n_docs} documents exceed the limit of {state.server.max_docs_per_request} "
                "per request",
                param="documents",
            )
        if query is not None and len(query) > state.server.max_query_chars:
            raise InvalidRequest(
                f"query has {len(query)} characters; the limit is {state.server.max_query_chars}",
                param="query",
            )
        limit = state.server.max_instruction_chars
        if instruction is not None and len(instruction) > limit:
            raise InvalidRequest(
                f"instruction has {len(instruction)} characters; the limit is {limit}",
                param="instruction",
            )

    @app.exception_handler(RerankerError)
    async def on_reranker_error(request: Request, exc: RerankerError) -> JSONResponse:
        if isinstance(exc, InvalidRequest):
            return json_error(400, str(exc), "invalid_request_error", exc.param)
        if isinstance(exc, Overloaded):
            state.metrics.overloaded.inc()
            return json_error(
                429,
                str(exc),
                "rate_limit_error",
                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
            )
        if isinstance(exc, ServiceUnavailable):
            return json_error(503, str(exc), "service_unavailable", headers={"Retry-After": "5"})
        if isinstance(exc, BackendDead):
            return await backend_dead(request, exc)
        if isinstance(exc, ScoringTimeout):
            return json_error(504, str(exc), "timeout_error")
        if isinstance(exc, ClientDisconnected):  # nobody reads it: logged and counted as 499
            return json_error(499, str(exc), "client_closed_request")
        return await on_unexpected(request, exc)

    async def backend_dead(request: Request, exc: Exception) -> JSONResponse:
        """503 for a request that failed because the backend died (the watchdog, woken by
        the health check, restarts it or stops the server)."""
        await supervisor.refresh()
        logger.warning(
            "request %s on %s: the backend died under it: %s",
            getattr(request.state, "request_id", "-"),
            log_safe(request.url.path),
            exc,
        )
        message = supervisor.unavailable() or f"the backend failed under this request: {exc}"
        return json_error(503, message, "service_unavailable", headers={"Retry-After": "5"})

    def usage(meta: ScoreMeta) -> dict[str, Any]:
        return {"prompt_tokens": meta["scored_tokens"], "total_tokens": meta["scored_tokens"]}

    async def rerank(body: RerankBody, request: Request) -> dict[str, Any]:
        texts = body.texts()
        check_limits(body.query, len(texts), body.instruction)
        scores, meta = await run(
            ScoreRequest(body.query, texts, True, body.instruction, body.max_tokens_per_doc),
            request,
        )
        order = rank_order(scores, texts)
        if body.top_n is not None:
            order = order[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return {
            "id": request.state.request_id,
            "model": state.model,
            "results": results,
            "usage": {**usage(meta), "search_units": 1},
            "meta": {
                **meta.to_dict(),
                "api_version": {"version": "2"},
                "billed_units": {"search_units": 1, "input_tokens": meta["scored_tokens"]},
            },
        }

    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.post(path, summary="Rerank documents (Cohere v2 / Jina shape)")(rerank)

    async def score(body: ScoreBody, request: Request) -> dict[str, Any]:
        try:
            queries, docs = body.pairs()
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="queries") from exc
        check_limits(max(queries, key=len), len(docs), body.instruction)
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q, []).append(i)
        runs = [
            asyncio.ensure_future(
                run(ScoreRequest(q, [docs[i] for i in idx], True, body.instruction), request)
            )
            for q, idx in groups.items()
        ]
        try:
            results = await asyncio.gather(*runs)
        except BaseException:  # one query failed: the others' work is not needed either
            for pending in runs:
                pending.cancel()
            raise
        data: list[dict[str, Any]] = [{}] * len(docs)
        tokens = 0
        for idx, (scores, meta) in zip(groups.values(), results, strict=True):
            tokens += meta["scored_tokens"]
            for i, s in zip(idx, scores, strict=True):
                data[i] = {"index": i, "object": "score", "score": s}
        return {
            "id": request.state.request_id,
            "object": "list",
            "created": int(time.time()),
            "model": state.model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    for path in ("/score", "/v1/score"):
        app.post(path, summary="Score query/document pairs (vLLM shape)")(score)

    @app.post("/v1/score_with_meta", summary="The protocol call: scores in input order + meta")
    async def score_with_meta(body: ScoreWithMetaBody, request: Request) -> dict[str, Any]:
        check_limits(body.query, len(body.docs), body.instruction)
        scores, meta = await run(
            ScoreRequest(
                body.query, body.docs, body.normalize, body.instruction, body.max_doc_tokens
            ),
            request,
        )
        return {"scores": scores, "meta": meta.to_dict()}

    @app.get("/health", summary="Liveness: ok, loading, or dead (503)")
    async def health() -> Response:
        """``{"status": "ok" | "loading" | "draining" | "dead", "reason"}``: 200 while the
        process is serving, loading or stopping, 503 once its backend is dead (the process
        restarts it or exits)."""
        details: dict[str, Any] = {}
        if pool is not None:
            status, reason, details = await pool.status()
        else:
            await supervisor.refresh()
            status, reason = supervisor.status()
        body = {"status": status, "reason": reason, "backend": state.backend_name, **details}
        return JSONResponse(body, 503 if status == "dead" else 200)

    @app.get("/ready", summary="Readiness: the backend can score (503 otherwise)")
    async def ready() -> Response:
        unavailable, details = await not_ready()
        if unavailable is None:
            return JSONResponse(
                {
                    "status": "ready",
                    "backend": state.backend_name,
                    "model": public_model_name(state.model),
                    **details,
                }
            )
        return json_error(
            503, unavailable, "service_unavailable", headers={"Retry-After": "5"}, **details
        )

    async def not_ready() -> tuple[str | None, dict[str, Any]]:
        """Why the service cannot score now (None: it can), and details to report."""
        if pool is not None:
            status, reason, details = await pool.status()
            return (None if status == "ok" else reason or status), details
        await supervisor.refresh()
        return supervisor.unavailable(), {}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if state.scheduler is not None:
            state.metrics.queue_depth.set(state.scheduler.queued_docs)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="The served model")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": state.model,
                    "object": "model",
                    "owned_by": "reranker",
                    "backend": state.backend_name,
                    "ready": (await not_ready())[0] is None,
                }
            ],
        }

    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")

    def assets_url(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS}/{name}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=assets_url(request, "swagger-ui-bundle.js"),
            swagger_css_url=assets_url(request, "swagger-ui.css"),
            swagger_favicon_url=assets_url(request, "favicon.png"),
            oauth2_redirect_url=None,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=assets_url(request, "redoc.standalone.js"),
            redoc_favicon_url=assets_url(request, "favicon.png"),
            with_google_fonts=False,
        )

    known_routes.update(r.path for r in app.routes if hasattr(r, "path"))
    app.add_middleware(
        ServiceMiddleware,
        state=state,
        known_routes=known_routes,
        on_unexpected=on_unexpected,
        behind_id_proxy=pool is not None,
    )
    # For what answers outside the app (reranker.service.server: a request head too slow).
    app.state.record_response = functools.partial(record_response, state)
    return app


class ServiceUnavailable(RerankerError):
    """The backend is not loaded (yet, or it failed), or no replica could score."""


def _no_backend() -> RerankBackend:
    raise RuntimeError("this app scores through its pool; it loads no backend")


class ScoringTimeout(RerankerError):
    """A request waited longer than ``request_timeout_s``."""


class ClientDisconnected(RerankerError):
    """The client closed the connection before its scores were ready (answered 499)."""


async def client_gone(http: Request) -> None:
    """Return once the client of ``http`` (whose body has been read) has disconnected."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # not expected once the body is read; never spin


__all__ = ["create_app"]
