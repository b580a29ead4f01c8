"""The HTTP server's drain (reranker.service.server._uvicorn_server with a Drain), on a
real uvicorn server on 127.0.0.1: a signal begins the drain, a repeat within
REPEAT_SIGNAL_S is the same stop (Ctrl-C reaches both the start script, which forwards
it, and the server), the server stops once nothing is in flight and no kept-alive
connection is open, and a stop flag set before the server took the signals over counts
as the signal."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
from server_helpers import free_port

from reranker.config import ServerSettings
from reranker.service.server import REPEAT_SIGNAL_S, _uvicorn_server, uvicorn_config


class CountingDrain:
    def __init__(self) -> None:
        self.begun = 0
        self.busy = True

    def begin(self) -> None:
        self.begun += 1

    def idle(self) -> bool:
        return not self.busy


async def app(scope, receive, send):  # a minimal ASGI app: the server is under test
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def started(drain: CountingDrain, stopped=None, timeout_s: float = 30.0, port=None):
    config = uvicorn_config(app, ServerSettings(), "127.0.0.1", port or free_port(), "warning")
    server = _uvicorn_server(config, drain, timeout_s, stopped)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    return server, thread


def test_a_repeated_signal_is_the_same_stop_and_the_drain_waits_for_idle():
    drain = CountingDrain()
    server, thread = started(drain)
    server.handle_exit(signal.SIGINT, None)
    server.handle_exit(signal.SIGINT, None)  # the forwarded copy of the same Ctrl-C
    time.sleep(0.5)
    assert drain.begun == 1 and not server.should_exit and thread.is_alive()
    drain.busy = False
    thread.join(10)
    assert not thread.is_alive() and drain.begun == 1


def test_a_stop_flag_set_before_the_server_took_signals_begins_the_drain():
    drain = CountingDrain()
    drain.busy = False
    server, thread = started(drain, stopped=lambda: True)
    thread.join(10)
    assert not thread.is_alive() and drain.begun == 1


def test_a_later_signal_stops_without_waiting_for_the_drain():
    drain = CountingDrain()  # stays busy: only the later signal ends it
    server, thread = started(drain)
    server.handle_exit(signal.SIGTERM, None)
    time.sleep(REPEAT_SIGNAL_S + 0.5)
    assert thread.is_alive() and drain.begun == 1
    server.handle_exit(signal.SIGTERM, None)
    thread.join(10)
    assert not thread.is_alive()


def test_the_drain_waits_for_kept_alive_connections_so_no_request_is_cut_off():
    """Nothing in flight, but a client holds a kept-alive connection from before the
    signal: stopping then could close it under a request the client is just sending
    (seen as a dropped connection). The server keeps answering on it until the client
    closes it, then stops; a connection opened after the signal (whose answers close it,
    in the service) does not hold the stop."""
    drain = CountingDrain()
    drain.busy = False
    port = free_port()
    server, thread = started(drain, port=port)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as client, httpx.Client(base_url=base) as late:
        assert client.get("/").status_code == 200  # the connection is kept alive
        server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.5)
        assert late.get("/").status_code == 200  # opened during the drain, kept alive too
        assert drain.begun == 1 and thread.is_alive()
        assert client.get("/").status_code == 200  # same connection, answered
        client.close()
        thread.join(3)  # before the later connection's keep-alive timeout (5 s)
        assert not thread.is_alive()  # the later connection did not hold it
