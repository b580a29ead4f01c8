"""Slow or broken clients cannot hold a connection; every response is logged, counted and
carries x-request-id; logs hold no raw control characters. Raw sockets against real
servers on 127.0.0.1, started as ``reranker serve`` starts its server."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_reranker_plugin import FlakyBackend
from server_helpers import free_port, running_server, wait_ready

REPO = Path(__file__).resolve().parents[2]
FAKE_PLUGIN = REPO / "tests" / "unit" / "fake_plugin"
TIMEOUTS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keep_alive_timeout_s": 1.0}
LIMIT = 4096  # max_request_bytes of these servers


def load():
    return FlakyBackend({"model_name": "flaky"})


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_server(load, max_request_bytes=LIMIT, **TIMEOUTS) as url:
        yield url


@pytest.fixture(scope="module")
def keyed() -> Iterator[str]:
    with running_server(load, api_key="s3cret", max_request_bytes=LIMIT) as url:
        yield url


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(0.05)
    return sock


def trickle(sock: socket.socket, data: bytes, every_s: float, seconds: float) -> tuple[bytes, bool]:
    """Send ``data`` a byte every ``every_s`` while reading, for at most ``seconds``.
    Returns what the server sent and whether it closed the connection."""
    got = b""
    deadline = time.monotonic() + seconds
    next_send = 0.0
    sent = 0
    while time.monotonic() < deadline:
        if sent < len(data) and time.monotonic() >= next_send:
            try:
                sock.sendall(data[sent : sent + 1])
            except OSError:
                return got, True
            sent += 1
            next_send = time.monotonic() + every_s
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def read_response(sock: socket.socket, seconds: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One whole response (content-length framed): status, headers, body."""
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head, body = data[:head_end].decode("latin-1"), data[head_end + 4 :]
            lines = head.split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
            if len(body) >= int(headers.get("content-length", 0)):
                return int(lines[0].split()[1]), headers, body
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"no whole response within {seconds} s: {data!r}")


def metric(base: str, route: str, status: int) -> float:
    pattern = rf'^reranker_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    found = re.search(pattern, httpx.get(f"{base}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def logged(caplog, request_id: str) -> list[str]:
    """The service's log lines naming ``request_id`` (a response is logged once it has been
    sent: wait for it a little)."""
    deadline = time.monotonic() + 2
    while True:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "reranker.service" and f"id={request_id}" in r.getMessage()
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def service_log(caplog):
    with caplog.at_level(logging.INFO, logger="reranker.service"):
        yield


# -- slow request heads -------------------------------------------------------------------


def test_a_request_head_sent_a_byte_at_a_time_gets_408_and_is_closed(base, caplog):
    before = metric(base, "other", 408)
    with connect(base) as sock:
        start = time.monotonic()
        got, closed = trickle(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 50, 0.2, 5)
        took = time.monotonic() - start
    assert closed, f"connection still open after 5 s: {got!r}"
    assert 0.9 < took < 3, took
    assert got.startswith(b"HTTP/1.1 408 "), got
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and b"x-request-id: " in head.lower()
    assert b'"type": "timeout_error"' in body or b'"type":"timeout_error"' in body
    assert metric(base, "other", 408) == before + 1
    request_id = re.search(rb"x-request-id: (\w+)", head, re.I).group(1).decode()
    lines = logged(caplog, request_id)
    assert len(lines) == 1 and lines[0].startswith("- - 408 "), lines


def test_a_connection_that_sends_nothing_is_closed(base):
    with connect(base) as sock:
        start = time.monotonic()
        got, closed = trickle(sock, b"", 1, 5)
        assert closed and got == b"" and time.monotonic() - start < 3


def test_each_request_on_a_kept_alive_connection_has_its_own_head_timeout(base):
    with connect(base) as sock:
        for _ in range(3):  # full requests, each in time: the connection stays
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection") != "close"
            time.sleep(0.5)  # idle, within keep_alive_timeout_s
        got, closed = trickle(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X" * 50, 0.2, 5)
    assert closed and got.startswith(b"HTTP/1.1 408 "), got


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_timeout_s(base):
    with connect(base) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        start = time.monotonic()
        got, closed = trickle(sock, b"", 1, 5)
        assert closed and got == b"" and time.monotonic() - start < 3


# -- slow or short bodies -------------------------------------------------------------------


def post_head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n{extra}\r\n"
    ).encode()


def test_a_body_shorter_than_its_content_length_gets_408_and_is_closed(base, caplog):
    before = metric(base, "/rerank", 408)
    with connect(base) as sock:
        start = time.monotonic()
        sock.sendall(post_head("/rerank", 100) + b'{"query": "q"')  # and nothing more
        status, headers, body = read_response(sock)
        took = time.monotonic() - start
        assert status == 408 and 0.9 < took < 3, (status, took)
        assert headers["connection"] == "close" and headers["x-request-id"]
        assert b"request body not received within 1 s" in body
        assert trickle(sock, b"", 1, 3)[1]  # closed
    assert metric(base, "/rerank", 408) == before + 1
    lines = logged(caplog, headers["x-request-id"])
    assert len(lines) == 1 and "POST /rerank 408 " in lines[0], lines


def test_a_client_gone_before_its_body_arrived_is_counted_as_499_not_400(base, caplog):
    """Nobody receives an answer: logged and counted as 499, like any client gone first."""
    before_499, before_400 = metric(base, "/rerank", 499), metric(base, "/rerank", 400)
    with connect(base) as sock:
        sock.sendall(post_head("/rerank", 100, "x-request-id: gone-mid-body\r\n") + b'{"q')
        time.sleep(0.2)
    lines = logged(caplog, "gone-mid-body")
    assert len(lines) == 1 and "POST /rerank 499 " in lines[0], lines
    assert metric(base, "/rerank", 499) == before_499 + 1
    assert metric(base, "/rerank", 400) == before_400


def test_a_body_sent_a_byte_at_a_time_gets_408(base):
    with connect(base) as sock:
        sock.sendall(post_head("/v1/score_with_meta", 200))
        got, closed = trickle(sock, b'{"query": "q", "docs": ["' + b"a" * 200, 0.1, 5)
    assert closed and got.startswith(b"HTTP/1.1 408 "), got


def test_a_body_still_coming_after_an_early_answer_is_dropped_then_closed(base):
    """A 404 (or 401, 413) answered before the body was read: the rest of the body is read
    and dropped for at most body_timeout_s, not for as long as the client keeps sending."""
    with connect(base) as sock:
        sock.sendall(post_head("/no-such-route", 1000) + b"{")
        status, headers, _ = read_response(sock)
        assert status == 404 and headers["x-request-id"]
        start = time.monotonic()
        got, closed = trickle(sock, b"x" * 100, 0.1, 6)
        assert closed and time.monotonic() - start < 3, got


def test_a_body_sent_in_time_keeps_its_connection(base):
    body = b'{"query": "q", "docs": ["abc", "de"]}'
    with connect(base) as sock:
        for _ in range(2):
            sock.sendall(post_head("/v1/score_with_meta", len(body)) + body)
            status, headers, answer = read_response(sock)
            assert status == 200 and b'"scores"' in answer, answer
            assert headers.get("connection") != "close"


# -- every response: x-request-id, one log line, one count with its status ------------------


def test_413_by_header_is_logged_counted_and_has_an_id(base, caplog):
    before = metric(base, "/rerank", 413)
    with connect(base) as sock:
        sock.sendall(post_head("/rerank", LIMIT + 1))  # refused before any body is sent
        status, headers, body = read_response(sock)
    assert status == 413 and b"exceeds 4096 bytes" in body
    request_id = headers["x-request-id"]
    assert metric(base, "/rerank", 413) == before + 1
    lines = logged(caplog, request_id)
    assert len(lines) == 1 and "POST /rerank 413 " in lines[0], lines


def test_413_while_streaming_is_logged_and_counted_as_413(base, caplog):
    before_413, before_400 = metric(base, "/rerank", 413), metric(base, "/rerank", 400)

    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(10):
            yield b"x" * 1000

    r = httpx.post(  # chunked: no content-length to refuse by
        f"{base}/rerank", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert metric(base, "/rerank", 413) == before_413 + 1
    assert metric(base, "/rerank", 400) == before_400
    request_id = r.headers["x-request-id"]
    lines = logged(caplog, request_id)
    assert len(lines) == 1 and "POST /rerank 413 " in lines[0], lines


def test_401_is_logged_counted_and_has_an_id(keyed, caplog):
    before = metric(keyed, "/rerank", 401)
    r = httpx.post(f"{keyed}/rerank", json={"query": "q", "documents": ["a"]})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    request_id = r.headers["x-request-id"]
    lines = logged(caplog, request_id)
    assert len(lines) == 1 and "POST /rerank 401 " in lines[0], lines
    assert metric(keyed, "/rerank", 401) == before + 1


def test_unauthenticated_random_paths_share_one_metrics_label(keyed):
    before = metric(keyed, "other", 401)
    for i in range(20):
        assert httpx.get(f"{keyed}/random-{i}-{time.time_ns()}").status_code == 401
    text = httpx.get(f"{keyed}/metrics").text
    assert "random-" not in text
    assert metric(keyed, "other", 401) == before + 20


# -- what reaches the log --------------------------------------------------------------------


def test_control_characters_of_a_path_are_escaped_in_the_log(base, caplog):
    r = httpx.get(f"{base}/a%0Aforged%20200%0D%1B[31m%E2%80%A8end")
    assert r.status_code == 404
    lines = logged(caplog, r.headers["x-request-id"])
    assert len(lines) == 1, lines
    line = lines[0]
    assert not any(ch in line for ch in "\n\r\x1b\u2028"), repr(line)
    assert "/a\\x0aforged 200\\x0d\\x1b[31m\\u2028end 404 " in line, line


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("client-42", True),
        ("a" * 128, True),
        ("a" * 129, False),  # too long
        ("has space", False),
        ("caf\u00e9", False),  # not ASCII
        ("", False),
    ],
)
def test_a_client_request_id_is_kept_only_if_short_printable_ascii(base, caplog, sent, kept):
    r = httpx.get(f"{base}/health", headers={"x-request-id": sent.encode("latin-1")})
    got = r.headers["x-request-id"]
    if kept:
        assert got == sent
    else:
        assert got != sent and re.fullmatch(r"[0-9a-f]{32}", got), got
    assert [m for m in logged(caplog, got) if m.endswith(f"id={got}")]


# -- unknown fields ----------------------------------------------------------------------


def test_unknown_fields_are_ignored_on_compatible_routes_and_refused_on_the_protocol(base):
    vendor = {"model": "m", "truncation": "END", "priority": 3}
    r = httpx.post(f"{base}/rerank", json={"query": "q", "documents": ["a"], **vendor})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{base}/v1/score", json={"queries": "q", "documents": ["a"], **vendor})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{base}/v1/score_with_meta", json={"query": "q", "docs": ["a"], "normalise": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "normalise", r.text


# -- reranker serve has the same timeouts ----------------------------------------------------


def test_reranker_serve_closes_a_slow_request_head(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("services:\n  rerank:\n    server:\n      header_timeout_s: 1\n")
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(FAKE_PLUGIN), os.environ.get("PYTHONPATH", "")]),
        RERANK_BACKEND="fake_length",
        RERANK_MODEL="m",
        RERANK_CONFIG=str(config),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "reranker.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_ready(base, 60, proc)
        with connect(base) as sock:
            got, closed = trickle(sock, b"GET /ready HTTP/1.1\r\n" + b"X" * 50, 0.2, 5)
        assert closed and got.startswith(b"HTTP/1.1 408 "), got
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
