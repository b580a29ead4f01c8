"""``reranker serve``: validate the config, start uvicorn, load the backend, drain on exit."""

from __future__ import annotations

import logging
import os
import sys

from reranker.config import load_settings, resolve_backend_options
from reranker.errors import RerankerError
from reranker.registry import load_backend

logger = logging.getLogger("reranker.service")


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
    status 2 and one clear message.
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

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    app = create_app(
        lambda: load_backend(cls.name, options),
        server_settings,
        cls.name,
        options.model_name,
        on_load_error,
    )
    uv_config = uvicorn.Config(
        app,
        host=host or server_settings.host,
        port=server_settings.port if port is None else port,
        log_level="info",
        timeout_graceful_shutdown=int(server_settings.request_timeout_s),
        access_log=False,
    )
    server = uvicorn.Server(uv_config)
    server.run()
    if failure:
        exc = failure[0]
        message = str(exc) if isinstance(exc, RerankerError) else repr(exc)
        print(f"error: the {cls.name} backend could not start: {message}", file=sys.stderr)
        return 2
    return 0
