"""Past one host: ``reranker serve`` joins an existing Ray cluster (``scale.address``)
and its replicas serve from both nodes. The cluster is two Ray nodes simulated on this
machine (``ray.cluster_utils.Cluster``), one CPU each, so one replica lands on each."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest
from scale_helpers import AUTH, log_tail, replica_counts, started_service, stop, write_config


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_joins_a_cluster_and_serves_through_both_nodes(two_node_cluster, tiny_model_dir, tmp_path):
    scale = {
        "engine": "ray",
        "address": two_node_cluster.address,
        "replicas": 2,
        "cpus_per_replica": 1,
    }
    config = write_config(tmp_path / "cluster.yaml", str(tiny_model_dir), scale)
    log = tmp_path / "cluster.log"
    with started_service(config, log) as (base, proc):
        body = {"query": "what do pandas eat?", "documents": ["bamboo", "fish", "leaves"]}
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(f"{base}/rerank", json=body, headers=AUTH, timeout=60),
                    range(48),
                )
            )
        assert [a.status_code for a in answers] == [200] * 48
        served = replica_counts(base)
        nodes = {node for (node, _), n in served.items() if n > 0}
        assert len(nodes) == 2, (served, log_tail(log))
        assert stop(proc) == 0, log_tail(log)
    # The service removed its application and left the cluster running.
    import ray
    from ray import serve

    ray.init(address=two_node_cluster.address)
    try:
        assert "reranker" not in serve.status().applications
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()
