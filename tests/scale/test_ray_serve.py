"""The service on Ray Serve (a local Ray instance, two replicas of the tiny model),
started by ``scripts/start_reranker.sh`` with a ``scale`` section, for each ingress
(HTTP in the ``reranker serve`` process, or Ray Serve's proxy): the same answers as the
single-process service on every route, both replicas serve, a replica killed under load
loses no request and comes back, SIGTERM drains and exits 0.

One Ray start per ingress (CI cost): the tests share the service and run in order.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from scale_helpers import (
    AUTH,
    Load,
    backend_replica_pids,
    log_tail,
    replica_counts,
    started_service,
    stop,
    wait_for,
    write_config,
)

MAX_DOCS = 40
DOCS = [
    "The giant panda is a bear native to South Central China.",
    "Paris is the capital and largest city of France.",
    "Pandas eat bamboo almost exclusively.",
    "A bear is a large mammal of the family Ursidae.",
    "pandas is a Python library for data analysis.",
]
QUERY = "What do giant pandas eat?"

# (method, path, json body, headers) -- asked of both services, answers compared.
REQUESTS: list[tuple[str, str, Any, dict[str, str]]] = [
    ("POST", "/rerank", {"query": QUERY, "documents": DOCS}, AUTH),
    (
        "POST",
        "/v1/rerank",
        {"query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True},
        AUTH,
    ),
    ("POST", "/v2/rerank", {"query": QUERY, "documents": [{"text": d} for d in DOCS]}, AUTH),
    ("POST", "/score", {"queries": QUERY, "documents": DOCS}, AUTH),
    ("POST", "/v1/score", {"text_1": [QUERY, "bears"], "text_2": DOCS[:2]}, AUTH),
    (
        "POST",
        "/v1/score_with_meta",
        {"query": QUERY, "docs": [*DOCS, None, "  "], "normalize": False},
        AUTH,
    ),
    ("POST", "/rerank", {"query": QUERY, "documents": DOCS, "instruction": "Food facts"}, AUTH),
    ("GET", "/v1/models", None, AUTH),
    ("GET", "/ready", None, {}),
    ("GET", "/health", None, {}),
    # Errors: the same status and body.
    ("POST", "/rerank", {"query": QUERY, "documents": DOCS}, {}),  # no API key: 401
    ("POST", "/rerank", {"query": " ", "documents": DOCS}, AUTH),
    ("POST", "/rerank", {"query": QUERY, "documents": ["x"] * (MAX_DOCS + 1)}, AUTH),
    ("POST", "/rerank", '{"query": "q", "documents": ["ok", "bad \\ud800 text"]}', AUTH),
    ("POST", "/score", {"queries": [QUERY, QUERY], "documents": DOCS}, AUTH),
    ("POST", "/rerank", "{not json", AUTH),
    ("GET", "/no-such-route", None, AUTH),
]
VOLATILE = {"id", "created", "replicas", "elapsed_ms"}  # per call, not per answer


def ask(base: str, method: str, path: str, body: Any, headers: dict) -> httpx.Response:
    if isinstance(body, str):
        headers = {**headers, "content-type": "application/json"}
        return httpx.request(method, base + path, content=body, headers=headers, timeout=60)
    return httpx.request(method, base + path, json=body, headers=headers, timeout=60)


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON, floats within 1e-5, volatile keys (ids, timestamps) ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() - VOLATILE == b.keys() - VOLATILE, where
        for key in a.keys() - VOLATILE:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module", params=["process", "ray"])
def configs(request, tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """HTTP served by the ``reranker serve`` process (one Ray call a request), then by
    Ray Serve's proxy and an HTTP front (two)."""
    folder = tmp_path_factory.mktemp(f"scale-{request.param}")
    scale = {"engine": "ray", "replicas": 2, "cpus_per_replica": 0.5, "ingress": request.param}
    return {
        "single": write_config(
            folder / "single.yaml", str(tiny_model_dir), None, max_docs_per_request=MAX_DOCS
        ),
        "ray": write_config(
            folder / "ray.yaml", str(tiny_model_dir), scale, max_docs_per_request=MAX_DOCS
        ),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def single_answers(configs) -> list[tuple[int, Any]]:
    """The single-process service's answers to REQUESTS."""
    with started_service(configs["single"], configs["folder"] / "single.log") as (base, _):
        return [_answer(ask(base, *r)) for r in REQUESTS]


@pytest.fixture(scope="module")
def ray_service(configs):
    log = configs["folder"] / "ray.log"
    with started_service(configs["ray"], log) as (base, proc):
        yield base, proc, log


def _answer(response: httpx.Response) -> tuple[int, Any]:
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def test_every_route_answers_as_the_single_process_service(single_answers, ray_service):
    base, _, _ = ray_service
    for request, (status, body) in zip(REQUESTS, single_answers, strict=True):
        got_status, got_body = _answer(ask(base, *request))
        assert got_status == status, (request[:2], got_body)
        same(body, got_body, f"{request[0]} {request[1]}")


def test_ready_and_health_report_the_replicas(ray_service):
    base, _, _ = ray_service

    def both_running() -> bool:
        return httpx.get(f"{base}/ready", timeout=10).json()["replicas"] == {"running": 2}

    # /ready is 200 from the first running replica on, and reads Ray Serve's view at most
    # a second old: the second replica may still be starting when the service is ready
    assert wait_for(both_running, 60)
    ready = httpx.get(f"{base}/ready", timeout=10).json()
    assert ready["status"] == "ready" and ready["replicas"] == {"running": 2}
    health = httpx.get(f"{base}/health", timeout=10).json()
    assert health["status"] == "ok" and health["replicas"] == {"running": 2}
    page = httpx.get(f"{base}/docs", timeout=10)
    assert page.status_code == 200 and "swagger-ui" in page.text


def test_one_request_id_echoed_and_used_in_the_access_log(ray_service):
    base, _, log = ray_service
    response = httpx.post(
        f"{base}/rerank",
        json={"query": QUERY, "documents": DOCS},
        headers={**AUTH, "x-request-id": "scale-req-42"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["scale-req-42"]
    assert response.json()["id"] == "scale-req-42"
    assert wait_for(lambda: "id=scale-req-42" in log.read_text(errors="replace"), 10)


def test_both_replicas_serve(ray_service):
    base, _, _ = ray_service
    before = replica_counts(base)
    body = {"query": QUERY, "documents": DOCS}
    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: httpx.post(f"{base}/rerank", json=body, headers=AUTH, timeout=60),
                range(48),
            )
        )
    assert [r.status_code for r in codes] == [200] * 48
    after = replica_counts(base)
    served = {key: n - before.get(key, 0.0) for key, n in after.items()}
    assert len([n for n in served.values() if n > 0]) == 2, served
    assert sum(served.values()) == 48


def test_a_replica_killed_under_load_loses_no_request_and_returns(ray_service):
    base, _, log = ray_service
    pids = backend_replica_pids()
    assert len(pids) == 2, pids
    before = set(replica_counts(base))
    load = Load(base)
    load.wait_for_answers(16)  # both replicas busy
    os.kill(pids[0], signal.SIGKILL)
    load.wait_for_answers(40)
    codes = load.stop()
    assert codes == [200] * len(codes), (sorted(set(map(str, codes))), log_tail(log))
    # Requests in flight on the killed replica were sent again: by the service (counted
    # in reranker_replica_retries_total) or, for those Ray had not yet handed to it, by
    # Ray's router; which of the two depends on timing, that none is lost does not.
    # Ray starts a new replica in place of the killed one; it serves.
    assert wait_for(lambda: len(set(backend_replica_pids()) - {pids[0]}) == 2, 120), log_tail(log)
    assert wait_for(
        lambda: httpx.get(f"{base}/ready", timeout=10).json().get("replicas") == {"running": 2},
        120,
    )
    load = Load(base)
    load.wait_for_answers(40)
    assert load.stop() == [200] * len(load.codes)
    assert set(replica_counts(base)) - before, "no new replica answered"


def test_sigterm_drains_in_flight_requests_and_exits_0(ray_service):
    base, proc, log = ray_service
    load = Load(base, limit=10**6, until_refused=True)
    load.wait_for_answers(8)
    proc.send_signal(signal.SIGTERM)
    codes = load.stop(timeout=120)
    # In flight at SIGTERM: answered. Sent after it: 503 with Retry-After (a load balancer
    # moves on), or a refused connection once the port is closed; never cut off, never 404.
    assert codes.count(200) >= 8
    assert set(codes) <= {200, 503, "ConnectError"}, sorted(set(map(str, codes)))
    assert all(after == "5" for after in load.retry_after), load.retry_after
    assert stop(proc) == 0, log_tail(log)
    assert wait_for(lambda: not backend_replica_pids(), 60), "replicas left running"
