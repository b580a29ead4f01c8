"""/health and /ready tell the truth about the backend; a dead backend is restarted or the
process exits non-zero. A backend whose health flips (no model), on real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fake_reranker_plugin import MortalBackend
from server_helpers import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]
FAKE_PLUGIN = REPO / "tests" / "unit" / "fake_plugin"
BODY = {"query": "q", "documents": ["abc", "de"]}


@contextmanager
def serving(load: Callable, **settings) -> Iterator[tuple[str, list[str]]]:
    """create_app(load) under uvicorn in a thread; yields its URL and the reasons passed to
    on_backend_failure (the server stops on the first, as ``reranker serve`` does)."""
    import uvicorn

    from reranker.config import ServerSettings
    from reranker.service.app import create_app

    failures: list[str] = []

    def on_backend_failure(reason: str) -> None:
        failures.append(reason)

    app = create_app(
        load,
        ServerSettings(health_interval_s=0.2, **settings),
        backend_name="fake_mortal",
        on_backend_failure=on_backend_failure,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", failures
    finally:
        server.should_exit = True
        thread.join(30)


def until(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_health_and_ready_follow_a_backend_that_dies(tmp_path):
    model_dir = tmp_path / "secret-folder" / "my-model"
    model_dir.mkdir(parents=True)
    release = threading.Event()
    backends: list[MortalBackend] = []

    def load():
        release.wait(30)
        backends.append(MortalBackend({"model_name": str(model_dir)}))
        return backends[-1]

    with serving(load) as (base, failures):
        assert until(lambda: _get(f"{base}/health") is not None)
        loading = httpx.get(f"{base}/health")
        assert loading.status_code == 200 and loading.json()["status"] == "loading"
        assert httpx.get(f"{base}/ready").status_code == 503
        release.set()
        assert wait_ready(base, 10)

        ok = httpx.get(f"{base}/health")
        assert ok.status_code == 200
        assert ok.json() == {"status": "ok", "reason": None, "backend": "fake_mortal"}
        ready = httpx.get(f"{base}/ready").json()
        assert ready["model"] == "my-model"  # an open route shows no filesystem path
        assert "secret-folder" not in httpx.get(f"{base}/ready").text
        assert httpx.post(f"{base}/rerank", json=BODY).status_code == 200

        backends[0].dead = "the engine process was killed by SIGKILL"
        not_ready = httpx.get(f"{base}/ready")  # asked at once, not at the next poll
        assert not_ready.status_code == 503 and int(not_ready.headers["retry-after"]) >= 1
        assert "killed by SIGKILL" in not_ready.json()["error"]["message"]
        dead = httpx.get(f"{base}/health")
        assert dead.status_code == 503
        assert dead.json()["status"] == "dead" and "SIGKILL" in dead.json()["reason"]
        refused = httpx.post(f"{base}/rerank", json=BODY)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "service_unavailable"
        assert refused.headers["retry-after"]
        # on_backend_failure: exit (the default): the server is told to stop, once.
        assert until(lambda: bool(failures), 5)
        time.sleep(0.5)
        assert failures == ["the engine process was killed by SIGKILL"]
        assert "reranker_backend_up 0.0" in httpx.get(f"{base}/metrics").text


def test_a_request_the_backend_dies_under_gets_503_not_500():
    with serving(lambda: MortalBackend({"model_name": "m"})) as (base, failures):
        assert wait_ready(base, 10)
        r = httpx.post(f"{base}/rerank", json={"query": "__die__", "documents": ["a"]})
        assert r.status_code == 503, r.text
        assert "the fake engine process was killed" in r.json()["error"]["message"]
        assert r.headers["retry-after"]
        assert until(lambda: bool(failures), 5)
        assert httpx.get(f"{base}/ready").status_code == 503


def test_restart_mode_brings_the_backend_back_then_gives_up():
    backends: list[MortalBackend] = []

    def load():
        backends.append(MortalBackend({"model_name": "m"}))
        return backends[-1]

    with serving(load, on_backend_failure="restart", max_backend_restarts=1) as (base, failures):
        assert wait_ready(base, 10)
        backends[0].dead = "engine killed"
        assert until(lambda: len(backends) == 2)
        assert wait_ready(base, 10)
        assert httpx.post(f"{base}/rerank", json=BODY).status_code == 200
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert "reranker_backend_restarts_total 1.0" in httpx.get(f"{base}/metrics").text
        assert failures == []

        backends[1].dead = "engine killed again"  # restarts spent: the server stops
        assert until(lambda: bool(failures), 5)
        assert "engine killed again" in failures[0] and "1 restarts spent" in failures[0]
        assert len(backends) == 2
        health = httpx.get(f"{base}/health")
        assert health.status_code == 503 and health.json()["status"] == "dead"


def test_restart_that_fails_to_load_counts_and_then_exits():
    loads = []

    def load():
        loads.append(1)
        if len(loads) > 1:
            raise RuntimeError("no memory left for the engine")
        return MortalBackend({"model_name": "m"})

    with serving(load, on_backend_failure="restart", max_backend_restarts=2) as (base, failures):
        assert wait_ready(base, 10)
        httpx.post(f"{base}/rerank", json={"query": "__die__", "documents": ["a"]})
        assert until(lambda: bool(failures), 10)
        assert len(loads) == 3
        assert "no memory left for the engine" in failures[0]
        assert httpx.get(f"{base}/ready").status_code == 503


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def _serve(port: int, backend: str, config: Path) -> subprocess.Popen:
    """``reranker serve`` with a fake backend of tests/unit/fake_plugin."""
    path = os.pathsep.join([str(FAKE_PLUGIN), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "reranker.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=dict(
            os.environ,
            PYTHONPATH=path,
            RERANK_BACKEND=backend,
            RERANK_MODEL="m",
            RERANK_CONFIG=str(config),
            PYTHONUNBUFFERED="1",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_exits_4_with_the_reason_when_the_backend_dies(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("services:\n  rerank:\n    server:\n      health_interval_s: 0.5\n")
    port = free_port()
    proc = _serve(port, "fake_mortal", config)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_ready(base, 60, proc)
        r = httpx.post(f"{base}/rerank", json={"query": "__die__", "documents": ["a"]})
        assert r.status_code == 503
        started = time.monotonic()
        assert proc.wait(30) == 4
        assert time.monotonic() - started < 15
        _, err = proc.communicate()
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert lines == [
            "error: the fake_mortal backend died while serving: the fake engine process was "
            "killed; exiting with status 4 (on_backend_failure: exit)"
        ], err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_exits_0_after_a_drained_sigterm(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("services:\n  rerank:\n    backend: fake_length\n")
    port = free_port()
    proc = _serve(port, "fake_length", config)
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", 60, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
