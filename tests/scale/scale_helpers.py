"""Starting the service on Ray Serve with the project's own script, as a user does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from server_helpers import free_port, wait_ready  # noqa: E402

API_KEY = "scale-test-key"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def write_config(
    path: Path,
    model: str,
    scale: dict | None,
    backend: str = "qwen3_transformers",
    options: dict | None = None,
    **server: object,
) -> Path:
    """A config file for ``backend`` on ``model``, with ``scale`` if given."""
    rerank: dict = {
        "backend": backend,
        "server": {"api_key": API_KEY, **server},
        "backends": {backend: {"model_name": model, **(options or {})}},
    }
    if scale is not None:
        rerank["scale"] = scale
    path.write_text(yaml.safe_dump({"services": {"rerank": rerank}}))
    return path


@contextmanager
def started_service(config: Path, log: Path, start_timeout: float = 240) -> Iterator[tuple]:
    """``scripts/start_reranker.sh --config CONFIG`` on a free port; yields
    ``(base_url, process)`` once ``/ready`` is 200; SIGTERM and wait at the end."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/start_reranker.sh", "--config", str(config), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, start_timeout, proc):
            raise RuntimeError(f"service did not become ready:\n{log_tail(log)}")
        yield base, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 90) -> int:
    """SIGTERM the service (a drained stop); kill its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


_REPLICA_LINE = re.compile(
    r'^reranker_replica_requests_total\{node="([^"]+)",replica="([^"]+)"\} ([0-9.e+]+)$', re.M
)


def replica_counts(base: str) -> dict[tuple[str, str], float]:
    """``{(node, replica): requests answered}`` from the front's ``/metrics``."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {(node, rep): float(n) for node, rep, n in _REPLICA_LINE.findall(text)}


def backend_replica_pids() -> list[int]:
    """Process ids of the backend replicas (Ray names their processes)."""
    out = subprocess.run(
        ["pgrep", "-f", "ServeReplica:reranker:backend"], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def wait_for(predicate, seconds: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
