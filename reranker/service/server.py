"""``reranker serve``: validate the config, start uvicorn, load the backend, drain on exit.

Exit status: 0 after a drained stop (SIGTERM / SIGINT), 2 when the configuration or the
backend's first load fails, 4 when the backend died while serving and was not restarted
(``on_backend_failure``); each failure prints one ``error:`` line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from reranker.config import ServerSettings, load_settings, resolve_backend_options
from reranker.core.errors import RerankerError
from reranker.core.registry import load_backend

logger = logging.getLogger("reranker.service")

EXIT_LOAD_FAILED = 2
EXIT_BACKEND_DIED = 4


def timed_http_protocol(
    settings: ServerSettings, on_head_timeout: Callable[[str, float], None] | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the timeouts it lacks, on every connection:

    - a request head (request line and headers) not complete ``header_timeout_s`` after
      the connection opened (its first request) or after its first byte (a later request
      on a kept-alive connection) gets a 408 JSON error, the connection closed (a
      connection that sent nothing is just closed); ``on_head_timeout(request_id,
      seconds)`` records it;
    - an idle kept-alive connection is closed after ``keep_alive_timeout_s``;
    - a request body still arriving after its response was sent (a 401, 404 or 413 sent
      before the body was read) is read and dropped for at most ``body_timeout_s``, then
      the connection is closed.

    A body the app is reading has ``body_timeout_s`` too: the app's middleware answers 408.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from reranker.service.errors import error_body

    head_s = settings.header_timeout_s

    class TimedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = settings.keep_alive_timeout_s  # type: ignore[assignment]
            self.fresh = True  # no request head received yet
            self.head_timer: asyncio.TimerHandle | None = None
            self.head_since = 0.0
            self.drain_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.disarm()

        def disarm(self) -> None:
            for timer in (self.head_timer, self.drain_timer):
                if timer is not None:
                    timer.cancel()
            self.head_timer = self.drain_timer = None

        def arm(self) -> None:
            """Start or stop the head and drain timers for the connection's state."""
            if self.transport.is_closing():
                self.disarm()
                return
            theirs, ours = self.conn.their_state, self.conn.our_state
            if theirs is not h11.IDLE:
                self.fresh = False
            awaiting = theirs is h11.IDLE and ours is h11.IDLE
            partial = awaiting and bool(self.conn.trailing_data[0])
            if awaiting and (partial or self.fresh):
                if self.head_timer is None:
                    self.head_since = self.loop.time()
                    self.head_timer = self.loop.call_later(head_s, self.head_timed_out)
            else:
                if self.head_timer is not None:
                    self.head_timer.cancel()
                    self.head_timer = None
                if awaiting and self.timeout_keep_alive_task is None:
                    # Idle between requests (also after a dropped body, whose bytes
                    # stopped uvicorn's keep-alive timer): uvicorn's keep-alive timeout.
                    self.timeout_keep_alive_task = self.loop.call_later(
                        self.timeout_keep_alive, self.timeout_keep_alive_handler
                    )
            draining = theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE)
            if draining and self.drain_timer is None:
                self.drain_timer = self.loop.call_later(
                    settings.body_timeout_s, self.transport.close
                )
            elif not draining and self.drain_timer is not None:
                self.drain_timer.cancel()
                self.drain_timer = None

        def head_timed_out(self) -> None:
            self.head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # part of a head came: say why it is closed
                request_id = uuid.uuid4().hex
                message = f"request head not received within {head_s:g} s"
                body = json.dumps(error_body(message, "timeout_error")).encode()
                head = [
                    b"HTTP/1.1 408 Request Timeout",
                    *(b"%s: %s" % header for header in self.server_state.default_headers),
                    b"content-type: application/json",
                    b"content-length: %d" % len(body),
                    b"connection: close",
                    b"x-request-id: " + request_id.encode(),
                ]
                self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
                if on_head_timeout is not None:
                    on_head_timeout(request_id, self.loop.time() - self.head_since)
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()

    return TimedH11Protocol


def uvicorn_config(
    app: Any,
    settings: ServerSettings,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> Any:
    """The ``uvicorn.Config`` that ``reranker serve`` runs ``app`` with (and the tests):
    its timeouts (:func:`timed_http_protocol`), drain on shutdown, no uvicorn access log
    (the app logs each response)."""
    import uvicorn

    record = getattr(getattr(app, "state", None), "record_response", None)

    def on_head_timeout(request_id: str, seconds: float) -> None:
        if record is not None:
            record("other", "-", "-", 408, seconds, request_id)

    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level=log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
        timeout_keep_alive=math.ceil(settings.keep_alive_timeout_s),
        access_log=False,
        http=timed_http_protocol(settings, on_head_timeout),
    )


class Drain(Protocol):
    """What answers requests while the HTTP server stops: :meth:`begin` makes new
    requests get 503 with ``Retry-After`` (and ``/ready`` 503); :meth:`idle` says when no
    request is left in flight."""

    def begin(self) -> None:
        """Refuse new requests from now on."""

    def idle(self) -> bool:
        """Whether every request taken before :meth:`begin` has been answered."""
        ...


REPEAT_SIGNAL_S = 2.0
"""A signal this soon after the first is the same stop (Ctrl-C in a terminal reaches
both ``start_reranker.sh``, which forwards it, and the server)."""


def _uvicorn_server(
    config: Any,
    drain: Drain | None = None,
    drain_timeout_s: float = 0,
    stopped: Callable[[], bool] | None = None,
) -> Any:
    """A uvicorn server that returns from ``run()`` after a drained SIGTERM / SIGINT
    instead of raising the signal again, so a clean stop exits 0 (not 143).

    With ``drain``, the first signal does not close connections at once: the server keeps
    answering (new requests 503 + ``Retry-After``, with ``connection: close``) until the
    requests in flight are done and every connection kept alive from before the signal is
    closed (by its client after such an answer, or idle for ``keep_alive_timeout_s``),
    ``drain_timeout_s`` at most, and then stops, giving connections what is left of that
    time; a client never has a kept-alive connection closed under a request it just sent.
    ``stopped()`` true counts as that first signal (one that arrived before the server
    took the signals over). A signal more than :data:`REPEAT_SIGNAL_S` after the first
    stops the server without waiting further."""
    import uvicorn

    class Server(uvicorn.Server):
        drain_asked: float | None = None  # when the first signal came
        drain_deadline: float | None = None
        kept_alive: frozenset[Any] = frozenset()  # the connections open when it came

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # uvicorn re-raises the signals it caught once its handlers are removed;
                # the drain is done, nothing is left for the default handler to do.
                self._captured_signals.clear()

        def handle_exit(self, sig: int, frame: Any) -> None:
            now = time.monotonic()
            if drain is None:
                super().handle_exit(sig, frame)
            elif self.drain_asked is None:
                self._captured_signals.append(sig)
                self.drain_asked = now
            elif now - self.drain_asked > REPEAT_SIGNAL_S:
                super().handle_exit(sig, frame)
                self.config.timeout_graceful_shutdown = 1

        async def on_tick(self, counter: int) -> bool:
            if drain is not None and not self.should_exit:
                now = time.monotonic()
                if self.drain_asked is None and stopped is not None and stopped():
                    self.drain_asked = now
                if self.drain_asked is not None and self.drain_deadline is None:
                    drain.begin()
                    self.drain_deadline = now + drain_timeout_s
                    self.kept_alive = frozenset(self.server_state.connections)
                elif self.drain_deadline is not None and (
                    # a connection kept alive from before the drain, closed by the stop,
                    # could be carrying a request its client just sent: wait until each
                    # is closed (later ones have only had connection: close answers)
                    (drain.idle() and not self.kept_alive & self.server_state.connections)
                    or now >= self.drain_deadline
                ):
                    self.should_exit = True
                    # what is left of the drain time, not that time again
                    left = math.ceil(self.drain_deadline - now)
                    self.config.timeout_graceful_shutdown = max(1, left)
            return await super().on_tick(counter)

    return Server(config)


def serve_http(
    app: Any,
    settings: ServerSettings,
    host: str | None = None,
    port: int | None = None,
    drain: Drain | None = None,
    stopped: Callable[[], bool] | None = None,
) -> bool:
    """Serve ``app`` over HTTP until SIGTERM / SIGINT (or ``stopped()``), then drain
    through ``drain`` (:func:`_uvicorn_server`) within ``settings.shutdown_timeout_s``.
    False when the server could not start (its port taken, ...; uvicorn logged why)."""
    config = uvicorn_config(app, settings, host, port)
    try:
        _uvicorn_server(config, drain, settings.shutdown_timeout_s, stopped).run()
    except SystemExit as exc:  # uvicorn's exit when it cannot bind or start
        if exc.code not in (0, None):
            return False
    return True


def serve(
    config: str | None = None,
    backend: str | None = None,
    host: str | None = None,
    port: int | None = None,
    model: str | None = None,
) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit status.

    Config and option errors, and a model that cannot be found, stop here before anything
    is loaded (a typed error). A model that fails to load stops the server with exit
    status 2 and one clear message; a backend that dies while serving, with status 4
    (unless ``on_backend_failure: restart`` brings it back).
    """
    from reranker.service.app import create_app

    env = dict(os.environ)
    if model:
        env["RERANK_MODEL"] = model
    if backend:
        env["RERANK_BACKEND"] = backend
    settings = load_settings(config, env=env)
    cls, options = resolve_backend_options(settings, env=env)
    # A model that cannot be found stops here, in seconds, before the server starts.
    cls.check_model(options)
    if settings.rerank.scale is not None:
        from reranker.scale.runner import serve_on_ray

        return serve_on_ray(settings, cls.name, options, host, port)
    server_settings = settings.rerank.server
    failure: list[BaseException] = []
    died: list[str] = []

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    def on_backend_failure(reason: str) -> None:
        died.append(reason)
        server.should_exit = True

    app = create_app(
        lambda: load_backend(cls.name, options),
        server_settings,
        cls.name,
        options.model_name,
        on_load_error,
        on_backend_failure,
    )
    server = _uvicorn_server(uvicorn_config(app, server_settings, host, port))
    server.run()
    if failure:
        exc = failure[0]
        message = str(exc) if isinstance(exc, RerankerError) else repr(exc)
        print(f"error: the {cls.name} backend could not start: {message}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    if died:
        print(
            f"error: the {cls.name} backend died while serving: {died[0]}; exiting with "
            f"status {EXIT_BACKEND_DIED} (on_backend_failure: "
            f"{server_settings.on_backend_failure})",
            file=sys.stderr,
        )
        return EXIT_BACKEND_DIED
    return 0
