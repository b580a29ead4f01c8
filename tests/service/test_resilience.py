"""Backend failures, overload, auth and graceful shutdown, on real servers."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fake_reranker_plugin import FlakyBackend
from server_helpers import free_port, running_server, wait_ready

REPO = Path(__file__).resolve().parents[2]


def test_backend_exception_is_a_500_with_an_id_and_the_next_request_works():
    with running_server(lambda: FlakyBackend({"model_name": "flaky"})) as base:
        r = httpx.post(f"{base}/rerank", json={"query": "__boom__", "documents": ["a"]})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "server_error" and err["id"] in err["message"]
        ok = httpx.post(f"{base}/rerank", json={"query": "fine", "documents": ["abc"]})
        assert ok.status_code == 200


def test_overload_gets_429_with_retry_after_then_recovers():
    load = lambda: FlakyBackend({"model_name": "flaky"})  # noqa: E731
    with running_server(load, max_queue_docs=20, batch_wait_ms=0) as base:
        body = {"query": "__slow__", "documents": [f"d{i}" for i in range(10)]}
        with cf.ThreadPoolExecutor(16) as pool:
            codes = list(
                pool.map(lambda _: httpx.post(f"{base}/rerank", json=body, timeout=60), range(16))
            )
        statuses = [r.status_code for r in codes]
        assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
        refused = next(r for r in codes if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        time.sleep(1.0)
        again = httpx.post(f"{base}/rerank", json={"query": "ok", "documents": ["a"]})
        assert again.status_code == 200
        assert "reranker_overloaded_total" in httpx.get(f"{base}/metrics").text


def test_api_key_is_required_when_configured():
    load = lambda: FlakyBackend({"model_name": "flaky"})  # noqa: E731
    with running_server(load, api_key="s3cret") as base:
        body = {"query": "q", "documents": ["a"]}
        assert httpx.post(f"{base}/rerank", json=body).status_code == 401
        wrong = httpx.post(f"{base}/rerank", json=body, headers={"authorization": "Bearer no"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        good = httpx.post(f"{base}/rerank", json=body, headers={"authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200  # open


def test_ready_is_503_while_loading():
    def slow_load():
        time.sleep(3)
        return FlakyBackend({"model_name": "flaky"})

    import threading

    import uvicorn

    from reranker.config import ServerSettings
    from reranker.service.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(slow_load, ServerSettings()),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(50):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        r = httpx.get(f"{base}/ready")
        assert r.status_code == 503
        busy = httpx.post(f"{base}/rerank", json={"query": "q", "documents": ["a"]})
        assert busy.status_code == 503 and busy.headers["retry-after"]
        time.sleep(3.5)
        assert httpx.get(f"{base}/ready").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def _start_cli_server(tiny_model_dir, port, extra_env=None):
    env = dict(
        os.environ, RERANK_MODEL=str(tiny_model_dir), PYTHONUNBUFFERED="1", **(extra_env or {})
    )
    return subprocess.Popen(
        [sys.executable, "-m", "reranker.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_drains_in_flight_requests(tiny_model_dir):
    port = free_port()
    proc = _start_cli_server(tiny_model_dir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_ready(base, 120, proc)
        docs = [f"document {i} " + "words " * (i % 300) for i in range(400)]
        with cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{base}/v1/score_with_meta",
                json={"query": "q", "docs": docs},
                timeout=300,
            )
            time.sleep(0.5)  # the request is in flight
            proc.send_signal(signal.SIGTERM)
            r = pending.result()
        assert r.status_code == 200 and len(r.json()["scores"]) == 400
        assert proc.wait(60) == 0  # a drained stop is a clean exit, not death by SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_model_stops_with_one_clear_message(tmp_path):
    proc = _start_cli_server(tmp_path / "no-such-model", free_port(), {"HF_HUB_OFFLINE": "1"})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "build-test-model" in out or "tiny_qwen3" in out
    assert "RERANK_MODEL" in out
    assert "Traceback" not in out


def test_bad_config_stops_before_loading(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "services:\n  rerank:\n    backends:\n      qwen3_transformers:\n        batch_size: 3\n"
    )
    proc = _start_cli_server(tmp_path, free_port(), {"RERANK_CONFIG": str(config)})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "services.rerank.backends.qwen3_transformers.batch_size: unknown key" in out
    assert "Traceback" not in out
