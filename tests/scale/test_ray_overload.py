"""A full replica's 429 crosses Ray intact: the client gets the single-process service's
429 body and ``Retry-After``, after one more try on the replica the router prefers."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
from scale_helpers import AUTH, started_service, write_config


def test_a_full_replica_answers_429_with_retry_after(tiny_model_dir, tmp_path):
    config = write_config(
        tmp_path / "small-queue.yaml",
        str(tiny_model_dir),
        {"engine": "ray", "replicas": 1, "cpus_per_replica": 1},
        max_queue_docs=60,
    )
    docs = [f"word{i} " * 60 for i in range(40)]
    with started_service(config, tmp_path / "service.log") as (base, _):

        def one(i: int) -> httpx.Response:
            body = {"query": f"query {i}", "documents": docs}
            return httpx.post(f"{base}/rerank", json=body, headers=AUTH, timeout=60)

        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(16)))
        codes = sorted(a.status_code for a in answers)
        assert set(codes) == {200, 429}, codes
        for answer in answers:
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
                error = answer.json()["error"]
                assert error["type"] == "rate_limit_error" and "queue full" in error["message"]
            else:
                assert len(answer.json()["results"]) == len(docs)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'reranker_replica_retries_total{reason="replica_full"}' in metrics
        assert "reranker_overloaded_total 0.0" not in metrics
