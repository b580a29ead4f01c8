"""kill -9 of the vLLM engine under a running service (scripts/start_reranker.sh): /ready
turns 503 at once, no request gets a 500 or hangs, the engine is restarted in place, and
once the restarts are spent the process exits 4 with the reason on stderr.

One server, two engine starts (~1 min each on CPU): the first engine's EngineCore process
is killed, the restarted engine's worker process is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from pairs import MAX_MODEL_LEN  # noqa: E402
from server_helpers import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
BACKEND = "qwen3_vllm"


def engine_process(server_pid: int, title: str):
    """The server's descendant process whose title holds ``title`` (VLLM::EngineCore,
    VLLM::Worker)."""
    psutil = pytest.importorskip("psutil")
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if title in " ".join(child.cmdline()) or title in child.name():
                return child
        except psutil.Error:
            continue
    return None


def config_file(tmp_path: Path, tiny_model_dir: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""services:
  rerank:
    backend: {BACKEND}
    backends:
      {BACKEND}:
        model_name: {tiny_model_dir}
        max_model_len: {MAX_MODEL_LEN}
        dtype: float32
        gpu_memory_utilization: 0.3
        enforce_eager: true
    server:
      on_backend_failure: restart
      max_backend_restarts: 1
      health_interval_s: 1.0
"""
    )
    return config


class Load:
    """Requests sent back to back from a thread; every status is recorded."""

    def __init__(self, base: str) -> None:
        docs = [f"document {i}: " + "words of a longer text " * 20 for i in range(200)]
        self.body = {"query": "which document is relevant?", "documents": docs}
        self.base = base
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                r = httpx.post(f"{self.base}/rerank", json=self.body, timeout=60)
                self.statuses.append(r.status_code)
            except httpx.HTTPError:
                self.statuses.append(-1)
            if self.statuses[-1] == 503:
                return


def test_killed_engine_is_reported_restarted_then_the_process_exits_4(tmp_path, tiny_model_dir):
    if not VENV.name.startswith(".venv-reranker-"):
        pytest.skip("run from the .venv-reranker-qwen3_vllm venv (scripts/test.sh does)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        ["bash", "scripts/start_reranker.sh", "--backend", BACKEND, "--port", str(port)],
        cwd=REPO,
        env=dict(
            os.environ,
            RERANK_CONFIG=str(config_file(tmp_path, tiny_model_dir)),
            RERANK_VENV_ROOT=str(VENV.parent),
            PYTHONUNBUFFERED="1",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err_lines: list[str] = []
    reader = threading.Thread(
        target=lambda: err_lines.extend(iter(proc.stderr.readline, "")), daemon=True
    )
    reader.start()
    try:
        assert wait_ready(base, 300, proc), "".join(err_lines)
        server = engine_process(proc.pid, "reranker.cli")
        assert server is not None
        core = engine_process(server.pid, "EngineCore")
        assert core is not None, [c.cmdline() for c in server.children(recursive=True)]
        first_engine = [core, *core.children(recursive=True)]

        # 1. kill -9 of the EngineCore while requests are being scored.
        load = Load(base)
        assert _until(lambda: 200 in load.statuses, 120), load.statuses
        core.kill()
        killed = time.monotonic()
        assert _until(lambda: httpx.get(f"{base}/ready", timeout=5).status_code == 503, 15)
        assert time.monotonic() - killed < 15
        load.thread.join(30)
        assert not load.thread.is_alive(), "a request in flight when the engine died hangs"
        assert set(load.statuses) <= {200, 503} and load.statuses[-1] == 503, load.statuses
        during = httpx.post(f"{base}/rerank", json={"query": "q", "documents": ["a"]})
        assert during.status_code == 503 and during.headers["retry-after"]
        health = httpx.get(f"{base}/health", timeout=5).json()
        assert health["status"] in ("loading", "dead")
        assert "EngineCore" in health["reason"] and "SIGKILL" in health["reason"], health

        # 2. restarted in place: ready again, scores, the dead engine's processes are gone.
        assert wait_ready(base, 240, proc), "".join(err_lines)
        ok = httpx.post(f"{base}/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=120)
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert "reranker_backend_restarts_total 1.0" in httpx.get(f"{base}/metrics").text
        assert _until(lambda: not any(p.is_running() for p in first_engine), 30)

        # 3. kill -9 of the new engine's worker: restarts spent, the process exits 4.
        core = engine_process(server.pid, "EngineCore")
        worker = engine_process(core.pid, "Worker") if core else None
        (worker or core).kill()
        assert _until(lambda: httpx.get(f"{base}/ready", timeout=5).status_code != 200, 15)
        assert proc.wait(60) == 4
        reader.join(10)
        errors = [line for line in err_lines if line.startswith("error:")]
        assert len(errors) == 1, "".join(err_lines)
        assert errors[0].startswith(f"error: the {BACKEND} backend died while serving: ")
        assert "vLLM engine" in errors[0] and "1 restarts spent" in errors[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _until(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False
