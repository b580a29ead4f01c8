"""A vLLM backend as a Ray Serve replica (``scale`` section, one replica): the real vLLM
engine under Ray gives the model card's scores; killed with its replica, its engine
process goes too (no orphan holding the device), and Ray brings the replica back."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pairs import MAX_MODEL_LEN

sys.path.insert(0, str(Path(__file__).parents[1] / "scale"))
from scale_helpers import (  # noqa: E402
    AUTH,
    backend_replica_pids,
    log_tail,
    started_service,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None and os.environ.get("RERANK_REQUIRE_RAY") != "1",
    reason="ray is not installed in this venv (setup_reranker_venv.sh qwen3_vllm --with ray)",
)

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "Bananas are rich in potassium.",
    "Berlin is the capital of Germany; Paris, of France.",
]


@pytest.fixture(scope="module")
def vllm_on_ray(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("vllm-scale")
    options = {
        "max_model_len": MAX_MODEL_LEN,
        "dtype": "float32",
        "gpu_memory_utilization": 0.3,
        "enforce_eager": True,
    }
    config = write_config(
        folder / "config.yaml",
        str(tiny_model_dir),
        {"engine": "ray", "replicas": 1},
        backend="qwen3_vllm",
        options=options,
    )
    log = folder / "service.log"
    with started_service(config, log, start_timeout=420) as (base, proc):
        yield base, log


def engine_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (
        Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    )
    return state not in ("Z", "X")


def test_scores_equal_the_model_card(vllm_on_ray, reference):
    base, _ = vllm_on_ray
    expected, _ = reference.score(QUERY, DOCS)
    r = httpx.post(
        f"{base}/v1/score_with_meta", json={"query": QUERY, "docs": DOCS}, headers=AUTH, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == pytest.approx(expected, abs=1e-4)
    assert r.json()["meta"]["backend"] == "qwen3_vllm"


def test_killed_replica_takes_its_engine_along_and_comes_back(vllm_on_ray):
    base, log = vllm_on_ray
    [replica] = backend_replica_pids()
    engines = engine_children(replica)
    assert engines, "the vLLM engine runs in a child process of the replica"
    os.kill(replica, signal.SIGKILL)
    # A request now: retried, or a 503 with Retry-After; never a hang or a 500.
    r = httpx.post(
        f"{base}/rerank", json={"query": QUERY, "documents": DOCS}, headers=AUTH, timeout=300
    )
    assert r.status_code in (200, 503), r.text
    if r.status_code == 503:
        assert r.headers.get("retry-after")
    assert wait_for(lambda: not any(alive(p) for p in engines), 60), "engine process orphaned"
    assert wait_for(lambda: httpx.get(f"{base}/ready", timeout=10).status_code == 200, 300), (
        log_tail(log)
    )
    r = httpx.post(
        f"{base}/rerank", json={"query": QUERY, "documents": DOCS}, headers=AUTH, timeout=120
    )
    assert r.status_code == 200, r.text
    assert backend_replica_pids() != [replica]
