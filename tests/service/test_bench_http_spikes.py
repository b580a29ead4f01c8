"""scripts/bench_http.py --spikes as a user runs it, with tiny numbers: this service
(qwen3_transformers on the tiny model, started with this interpreter, ``--python``, on
127.0.0.1) gets one client's sequential requests of each document count; p50, p99, max
and p99 / p50 come back per count, printed and as one JSON line (one server start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_spikes_mode_reports_p50_p99_max_per_document_count(tmp_path, tiny_model_dir):
    spikes = tmp_path / "spikes.jsonl"
    command = [
        sys.executable, "scripts/bench_http.py", "--spikes", "--python", sys.executable,
        "--model", str(tiny_model_dir),
        "--docs", "1,4", "--requests", "3", "--warmup", "1",
        "--min-words", "10", "--max-words", "60", "--max-model-len", "512",
        "--dtype", "float32", "--start-timeout", "300", "--request-timeout", "900",
        "--out", str(tmp_path / "bench-http.json"), "--json-out", str(spikes),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"

    (line,) = spikes.read_text().splitlines()
    record = json.loads(line)
    assert record["bench"] == "http_spikes" and record["backend"] == "qwen3_transformers"
    assert [row["docs"] for row in record["levels"]] == [1, 4]
    for row in record["levels"]:
        assert row["clients"] == 1 and row["requests"] == 3 and row["failed"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["p99_over_p50"] >= 1
    full = json.loads((tmp_path / "bench-http.json").read_text())
    assert set(full["servers"]) == {"ours"}  # no vllm serve in this mode
    # the service waits for a request as long as the client does (no early 429s)
    server = full["servers"]["ours"]["config"]["services"]["rerank"]["server"]
    assert server["request_timeout_s"] == 900
    assert "| docs | requests | p50 ms | p99 ms | max ms | p99 / p50 |" in done.stdout
