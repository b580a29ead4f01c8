"""``reranker serve``: validate the config, start uvicorn, load the backend, drain on exit.

Exit status: 0 after a drained stop (SIGTERM / SIGINT), 2 when the configuration or the
backend's first load fails, 4 when the backend died while serving and was not restarted
(``on_backend_failure``); each failure prints one ``error:`` line on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from reranker.config import load_settings, resolve_backend_options
from reranker.errors import RerankerError
from reranker.registry import load_backend

logger = logging.getLogger("reranker.service")

EXIT_LOAD_FAILED = 2
EXIT_BACKEND_DIED = 4


def _uvicorn_server(config: Any) -> Any:
    """A uvicorn server that returns from ``run()`` after a drained SIGTERM / SIGINT
    instead of raising the signal again, so a clean stop exits 0 (not 143)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # uvicorn re-raises the signals it caught once its handlers are removed;
                # the drain is done, nothing is left for the default handler to do.
                self._captured_signals.clear()

    return Server(config)


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
    import uvicorn

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
    uv_config = uvicorn.Config(
        app,
        host=host or server_settings.host,
        port=server_settings.port if port is None else port,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(server_settings.shutdown_timeout_s),
        access_log=False,
    )
    server = _uvicorn_server(uv_config)
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
