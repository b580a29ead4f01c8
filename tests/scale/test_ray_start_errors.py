"""Starting on Ray fails fast with one ``error:`` line naming the cause and exit status 2:
an address where no Ray answers, GPUs asked of a cluster without any, a replica whose
backend cannot load, an HTTP port already taken."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

from scale_helpers import ROOT, write_config


def serve(config, timeout: float, port: int = 0) -> tuple[int, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        ["bash", "scripts/start_reranker.sh", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return done.returncode, "\n".join(errors), time.monotonic() - start


def test_an_address_where_no_ray_answers(tiny_model_dir, tmp_path):
    config = write_config(
        tmp_path / "c.yaml", str(tiny_model_dir), {"engine": "ray", "address": "127.0.0.1:1"}
    )
    code, error, seconds = serve(config, 60)
    assert code == 2 and "cannot reach Ray at 127.0.0.1:1" in error, error
    assert seconds < 30


def test_gpus_asked_of_a_cluster_without_gpus(tiny_model_dir, tmp_path):
    config = write_config(
        tmp_path / "c.yaml", str(tiny_model_dir), {"engine": "ray", "gpus_per_replica": 1}
    )
    code, error, _ = serve(config, 120)
    assert code == 2 and "the Ray cluster has none" in error and "gpus_per_replica: 0" in error


def test_a_replica_that_cannot_load_its_model(tiny_model_dir, tmp_path):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    shutil.copy(tiny_model_dir / "config.json", broken / "config.json")
    config = write_config(tmp_path / "c.yaml", str(broken), {"engine": "ray", "replicas": 1})
    code, error, seconds = serve(config, 300)
    assert code == 2, error
    assert "could not start on Ray" in error and "ModelUnavailable" in error, error
    assert json.loads((tiny_model_dir / "config.json").read_text())  # the source untouched
    assert seconds < 240


def test_an_http_port_already_taken_stops_before_ray_starts(tiny_model_dir, tmp_path):
    config = write_config(
        tmp_path / "c.yaml", str(tiny_model_dir), {"engine": "ray", "replicas": 1}
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, error, seconds = serve(config, 60, taken.getsockname()[1])
    assert code == 2 and "cannot listen on 127.0.0.1:" in error, error
    assert seconds < 20  # no Ray start, no replica loaded
