"""Starting a real uvicorn server on 127.0.0.1 (random port) in a thread."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, seconds: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``/ready`` until 200 (True), the time is up or ``proc`` exits (False)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


@contextmanager
def running_server(load: Callable, **server_options) -> Iterator[str]:
    """Start create_app(load) under uvicorn; yield its base URL; stop it."""
    import uvicorn

    from reranker.config import ServerSettings
    from reranker.service.app import create_app
    from reranker.service.server import uvicorn_config

    settings = ServerSettings(**server_options)
    app = create_app(load, settings, backend_name="test", model="test-model")
    port = free_port()
    # The same uvicorn configuration as ``reranker serve`` (its protocol and timeouts).
    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    if not wait_ready(base, 120):
        server.should_exit = True
        raise RuntimeError("server did not become ready")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
