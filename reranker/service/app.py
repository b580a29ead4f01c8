"""FastAPI app factory: /rerank (Cohere/Jina), /score (vLLM), /v1/score_with_meta, ops.

The backend is loaded in a background thread at startup (``/ready`` answers 503 until it
is in), owned by a :class:`BatchScheduler`, and closed on shutdown after the queue drains.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from reranker.config import ServerSettings
from reranker.errors import InvalidRequest, Overloaded, RerankerError
from reranker.protocol import RerankBackend, ScoreRequest
from reranker.service.metrics import ServiceMetrics
from reranker.service.scheduler import BatchScheduler
from reranker.service.schemas import RerankBody, ScoreBody, ScoreWithMetaBody

logger = logging.getLogger("reranker.service")
OPEN_PATHS = {"/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc"}


def error_body(message: str, type_: str, param: str | None = None, **extra: Any) -> dict:
    """The one error shape: ``{"error": {"message", "type", "param"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, **extra}}


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes with 413, by header and while streaming."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        too_big = False

        async def limited_receive() -> dict:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_big = True
                    return {"type": "http.disconnect"}
            return message

        sent = False

        async def tracking_send(message: dict) -> None:
            nonlocal sent
            if too_big:
                return
            sent = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if too_big and not sent:
            await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        import json

        body = json.dumps(
            error_body(f"request body exceeds {self.limit} bytes", "invalid_request_error")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


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
        )


def create_app(
    load_backend: Callable[[], RerankBackend],
    server: ServerSettings | None = None,
    backend_name: str = "",
    model: str = "",
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the FastAPI app. ``load_backend`` runs in a thread at startup."""
    state = ServiceState(server or ServerSettings(), backend_name, model)

    def load() -> None:
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
        threading.Thread(target=load, name="backend-loader", daemon=True).start()
        yield
        # Shutdown: uvicorn has stopped taking requests and drained in-flight ones.
        if state.scheduler:
            await asyncio.to_thread(state.scheduler.close, 60.0)
        if state.backend:
            state.backend.close()

    app = FastAPI(title="reranker", version="0.1.0", lifespan=lifespan)
    app.state.service = state
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
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return json_error(400, "request body is not valid JSON", "invalid_request_error")
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return json_error(400, f"{param}: {msg}" if param else msg, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return json_error(exc.status_code, str(exc.detail), type_)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:16]
        logger.exception("internal error %s on %s", error_id, request.url.path)
        return json_error(
            500, f"internal server error (id {error_id})", "server_error", id=error_id
        )

    @app.middleware("http")
    async def access(request: Request, call_next: Callable) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        start = time.perf_counter()
        route = request.url.path
        key = state.server.api_key
        if key and route not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                response: Response = json_error(
                    401,
                    "missing or wrong API key (Authorization: Bearer <key>)",
                    "authentication_error",
                )
                response.headers["x-request-id"] = request_id
                state.metrics.requests.labels(route, "401").inc()
                return response
        try:
            response = await call_next(request)
        except Exception as exc:  # a backend failure: 500 with an id, the server lives on
            response = await on_unexpected(request, exc)
        seconds = time.perf_counter() - start
        response.headers["x-request-id"] = request_id
        known = route if route in known_routes else "other"
        state.metrics.requests.labels(known, str(response.status_code)).inc()
        state.metrics.latency.labels(known).observe(seconds)
        logger.info(
            "%s %s %d %.1fms id=%s",
            request.method,
            route,
            response.status_code,
            seconds * 1000,
            request_id,
        )
        return response

    async def run(request: ScoreRequest) -> tuple[list[float], dict[str, Any]]:
        if state.scheduler is None:
            if state.load_error is not None:
                raise ServiceUnavailable(f"backend failed to load: {state.load_error}")
            raise ServiceUnavailable("the model is still loading; retry shortly")
        state.metrics.queue_depth.set(state.scheduler.queued_docs)
        future = state.scheduler.submit(request)
        try:
            scores, meta = await asyncio.wait_for(
                asyncio.wrap_future(future), state.server.request_timeout_s
            )
        except TimeoutError:
            future.cancel()
            raise ScoringTimeout(
                f"scoring took longer than {state.server.request_timeout_s} s"
            ) from None
        state.metrics.documents.inc(meta["usable_docs"])
        state.metrics.tokens.inc(meta["scored_tokens"])
        state.metrics.dedup_ratio.observe(meta["dedup_ratio"])
        return scores, meta

    def check_limits(query: str | None, n_docs: int) -> None:
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
                headers={"Retry-After": str(max(1, round(exc.retry_after)))},
            )
        if isinstance(exc, ServiceUnavailable):
            return json_error(503, str(exc), "service_unavailable", headers={"Retry-After": "5"})
        if isinstance(exc, ScoringTimeout):
            return json_error(504, str(exc), "timeout_error")
        return await on_unexpected(request, exc)

    def usage(meta: dict[str, Any]) -> dict[str, Any]:
        return {"prompt_tokens": meta["scored_tokens"], "total_tokens": meta["scored_tokens"]}

    async def rerank(body: RerankBody, request: Request) -> dict[str, Any]:
        texts = body.texts()
        check_limits(body.query, len(texts))
        scores, meta = await run(
            ScoreRequest(body.query, texts, True, body.instruction, body.max_tokens_per_doc)
        )
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
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
                **meta,
                "api_version": {"version": "2"},
                "billed_units": {"search_units": 1, "input_tokens": meta["scored_tokens"]},
            },
        }

    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.post(path, summary="Rerank documents (Cohere v2 / Jina shape)")(rerank)

    @app.post("/score", summary="Score query/document pairs (vLLM shape)")
    async def score(body: ScoreBody, request: Request) -> dict[str, Any]:
        try:
            queries, docs = body.pairs()
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="queries") from exc
        check_limits(max(queries, key=len), len(docs))
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q, []).append(i)
        results = await asyncio.gather(
            *(
                run(ScoreRequest(q, [docs[i] for i in idx], True, body.instruction))
                for q, idx in groups.items()
            )
        )
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

    @app.post("/v1/score_with_meta", summary="The protocol call: scores in input order + meta")
    async def score_with_meta(body: ScoreWithMetaBody) -> dict[str, Any]:
        check_limits(body.query, len(body.docs))
        scores, meta = await run(
            ScoreRequest(
                body.query, body.docs, body.normalize, body.instruction, body.max_doc_tokens
            )
        )
        return {"scores": scores, "meta": meta}

    @app.get("/health", summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded (503 until then)")
    async def ready() -> Response:
        if state.scheduler is not None:
            return JSONResponse(
                {"status": "ready", "backend": state.backend_name, "model": state.model}
            )
        if state.load_error is not None:
            return json_error(
                503, f"backend failed to load: {state.load_error}", "service_unavailable"
            )
        return json_error(503, "model loading", "service_unavailable")

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
                    "ready": state.scheduler is not None,
                }
            ],
        }

    known_routes.update(r.path for r in app.routes if hasattr(r, "path"))
    app.add_middleware(BodyLimitMiddleware, limit=state.server.max_request_bytes)
    return app


class ServiceUnavailable(RerankerError):
    """The backend is not loaded (yet, or it failed)."""


class ScoringTimeout(RerankerError):
    """A request waited longer than ``request_timeout_s``."""


__all__ = ["create_app"]
