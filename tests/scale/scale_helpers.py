"""Starting the service on Ray Serve with the project's own script, as a user does."""

from __future__ import annotations

import concurrent.futures as cf
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


LOAD_DOCS = [
    "The giant panda is a bear native to South Central China.",
    "Paris is the capital and largest city of France.",
    "Pandas eat bamboo almost exclusively.",
    "A bear is a large mammal of the family Ursidae.",
    "pandas is a Python library for data analysis.",
]


class Load:
    """Closed-loop clients on ``/rerank`` until stopped (at most ``limit`` requests)."""

    def __init__(
        self, base: str, threads: int = 8, limit: int = 600, until_refused: bool = False
    ) -> None:
        self.base = base
        self.until_refused = until_refused  # a client stops at its first 503 / refusal
        self.retry_after: list[str | None] = []
        self.docs = [f"{d} ({i})" for i in range(6) for d in LOAD_DOCS]
        self.codes: list[int | str] = []
        self.stopped = False
        self.limit = limit
        self.pool = cf.ThreadPoolExecutor(threads)
        self.workers = [self.pool.submit(self._client, i) for i in range(threads)]

    def _client(self, k: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopped and len(self.codes) < self.limit:
                try:
                    r = client.post(
                        f"{self.base}/rerank",
                        json={"query": f"what do pandas eat? {k}", "documents": self.docs},
                        headers=AUTH,
                    )
                    self.codes.append(r.status_code)
                    if r.status_code == 503:
                        self.retry_after.append(r.headers.get("retry-after"))
                        if self.until_refused:
                            return
                except httpx.HTTPError as exc:
                    self.codes.append(type(exc).__name__)
                    if self.until_refused:
                        return

    def wait_for_answers(self, n: int, seconds: float = 120) -> None:
        target = len(self.codes) + n
        assert wait_for(lambda: len(self.codes) >= target, seconds, 0.05), len(self.codes)

    def stop(self, timeout: float = 0) -> list[int | str]:
        """Stop the clients (after ``timeout`` s, or when all have stopped by themselves)."""
        wait_for(lambda: all(w.done() for w in self.workers), timeout, 0.05)
        self.stopped = True
        for worker in self.workers:
            worker.result(timeout=120)
        self.pool.shutdown()
        return self.codes
