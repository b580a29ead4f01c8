"""``replicas: auto``: Ray Serve adds a replica when the load per replica passes
``target_ongoing_requests`` and removes it when the load is gone (short delays here)."""

from __future__ import annotations

import httpx
from scale_helpers import Load, log_tail, started_service, wait_for, write_config


def running_replicas(base: str) -> int:
    return httpx.get(f"{base}/health", timeout=10).json().get("replicas", {}).get("running", 0)


def test_replicas_follow_the_load(tiny_model_dir, tmp_path):
    scale = {
        "engine": "ray",
        "replicas": "auto",
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 2,
        "cpus_per_replica": 0.5,
    }
    config = write_config(tmp_path / "auto.yaml", str(tiny_model_dir), scale)
    log = tmp_path / "auto.log"
    with started_service(config, log) as (base, _):
        assert running_replicas(base) == 1
        load = Load(base, threads=6, limit=5000)
        try:
            scaled_up = wait_for(lambda: running_replicas(base) == 2, 120)
        finally:
            codes = load.stop()
        assert scaled_up, log_tail(log)
        assert codes and set(codes) == {200}, sorted(set(map(str, codes)))
        assert wait_for(lambda: running_replicas(base) == 1, 120), log_tail(log)
