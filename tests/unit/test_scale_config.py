"""The ``scale`` section: validation, and the replica count and Ray Serve options it
gives on a cluster (no Ray needed: pure functions over ``ray.cluster_resources()``)."""

from __future__ import annotations

import pytest

from reranker.config import ScaleSettings, load_settings
from reranker.core.errors import ConfigError
from reranker.scale.runner import cpus_per_replica, deployment_options, replica_count


def settings_with(tmp_path, scale_yaml: str):
    path = tmp_path / "config.yaml"
    path.write_text(f"services:\n  rerank:\n    scale:\n{scale_yaml}")
    return load_settings(path, env={})


def test_no_scale_section_means_one_process(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("services:\n  rerank:\n    backend: qwen3_transformers\n")
    assert load_settings(path, env={}).rerank.scale is None


def test_scale_keys_are_validated_with_their_path(tmp_path):
    with pytest.raises(ConfigError) as exc:
        settings_with(tmp_path, "      engine: ray\n      replica: 2\n")
    assert "services.rerank.scale.replica: unknown key" in str(exc.value)
    with pytest.raises(ConfigError, match="engine"):
        settings_with(tmp_path, "      engine: kubernetes\n")
    with pytest.raises(ConfigError, match="at least 1"):
        settings_with(tmp_path, "      replicas: 0\n")
    with pytest.raises(ConfigError, match="below min_replicas"):
        settings_with(
            tmp_path, "      replicas: auto\n      min_replicas: 4\n      max_replicas: 2\n"
        )
    with pytest.raises(ConfigError, match="gpus_per_replica"):
        settings_with(tmp_path, "      gpus_per_replica: -1\n")


@pytest.mark.parametrize(
    ("scale", "cluster", "expected"),
    [
        ({}, {"CPU": 16.0, "GPU": 8.0}, (8, 1.0)),  # one replica per GPU
        ({}, {"CPU": 2.0}, (1, 0.0)),  # no GPU: one CPU replica
        ({"gpus_per_replica": 2}, {"GPU": 8.0}, (4, 2.0)),  # tensor parallel 2
        ({"gpus_per_replica": 0.5}, {"GPU": 2.0}, (4, 0.5)),  # two per GPU
        ({"replicas": 3}, {"GPU": 8.0}, (3, 1.0)),
        ({"replicas": 2, "gpus_per_replica": 0}, {"CPU": 2.0}, (2, 0.0)),
    ],
)
def test_replica_count_fills_the_cluster_unless_told(scale, cluster, expected):
    assert replica_count(ScaleSettings(**scale), cluster) == expected


def test_deployment_options_fixed_and_autoscaled():
    fixed = deployment_options(ScaleSettings(replicas=2), 30.0, {"CPU": 64.0, "GPU": 4.0})
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_gpus": 1.0, "num_cpus": 16.0}
    assert fixed["graceful_shutdown_timeout_s"] == 30.0
    auto = deployment_options(
        ScaleSettings(replicas="auto", min_replicas=1, target_ongoing_requests=8),
        30.0,
        {"GPU": 4.0},
    )
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,  # every GPU of the cluster
        "target_ongoing_requests": 8.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
    }


@pytest.mark.parametrize(
    ("scale", "cluster", "expected"),
    [
        ({}, {"CPU": 32.0, "GPU": 2.0}, 16.0),  # the CPUs of its GPU
        ({"gpus_per_replica": 0.5}, {"CPU": 32.0, "GPU": 2.0}, 8.0),
        ({"gpus_per_replica": 2}, {"CPU": 32.0, "GPU": 8.0}, 8.0),
        ({"replicas": 2}, {"CPU": 2.0}, 1.0),  # no GPU: shared by replica
        ({"replicas": 4}, {"CPU": 2.0}, 0.5),
        ({"cpus_per_replica": 0.5}, {"CPU": 32.0, "GPU": 2.0}, 0.5),  # as set
    ],
)
def test_cpus_per_replica_shares_the_host_out(scale, cluster, expected):
    # Ray gives a replica as many threads as CPUs: one would starve tokenisation.
    assert cpus_per_replica(ScaleSettings(**scale), cluster) == expected
