"""scripts/fault_test.py as a user runs it, on vLLM's CPU build with the tiny model: the
service started through scripts/start_reranker.sh, 40 clients with random disconnects,
poison requests and a kill -9 of the engine under load. No innocent request fails, every
poison request gets a 4xx, abandoned requests are dropped unscored, memory stays bounded.

One server, two engine starts (the first, and the restart after the kill): about two
minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from pairs import MAX_MODEL_LEN  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def test_fault_test_script_passes_under_load_with_an_engine_kill(tmp_path, tiny_model_dir):
    if not VENV.name.startswith(".venv-reranker-"):
        pytest.skip("run from the .venv-reranker-qwen3_vllm venv (scripts/test.sh does)")
    out = tmp_path / "fault.json"
    command = [
        sys.executable,
        "scripts/fault_test.py",
        "--model",
        str(tiny_model_dir),
        "--backend",
        "qwen3_vllm",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--capacity-clients",
        "8",
        "--capacity-seconds",
        "6",
        "--clients",
        "40",
        "--seconds",
        "20",
        "--large-docs",
        "120",
        "--max-rss-growth-mb",
        "1024",
        "--min-goodput-share",
        "0.3",
        "--restart-timeout",
        "240",
        "--drain-timeout",
        "120",
        "--json-out",
        str(out),
        "--server-log",
        str(tmp_path / "server.log"),
    ]
    env = dict(
        os.environ,
        RERANK_VENV_ROOT=str(VENV.parent),
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    )
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "server.log").read_text() if (tmp_path / "server.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}\n{log[-3000:]}"
    result = json.loads(out.read_text())
    faults = result["faults"]
    assert result["passed"] and not result["failed_checks"], done.stdout

    innocent = faults["innocent"]
    assert innocent["failed"] == 0 and innocent["failures"] == []
    assert innocent["answered"] == innocent["sent"] > 50
    assert innocent["retried_after_503"] > 0, "no request was in flight when the engine died"
    assert faults["scores"]["checked"] > 0 and faults["scores"]["mismatched"] == []

    poison = faults["poison"]
    assert poison["sent"] >= 9 and poison["rejected_4xx"] == poison["sent"]
    assert {a["status"] for a in poison["answers"]} == {400}

    # Clients went away while their requests waited: the server dropped some unscored.
    leaving = faults["disconnects"]
    assert leaving["left"] > 0
    assert leaving["server_499"] > 0 and leaving["dropped_requests"] > 0
    assert leaving["dropped_documents"] >= leaving["dropped_requests"]
    assert all(v == 0 for v in faults["queue"]["idle_after"].values()), faults["queue"]

    engine = faults["engine"]
    assert engine["killed_pid"] and engine["restarts_total"] == 1.0
    assert engine["unready_after_s"] < 10 and engine["unready_after_s"] < engine["restart_s"] < 240
    assert 0 < faults["downtime_seconds"] < faults["wall_seconds"]
    # A gross-regression guard only: the CPU is shared with whatever else runs.
    assert faults["goodput"]["share_while_up"] >= 0.3, faults["goodput"]

    memory = result["memory"]
    assert memory["samples"] > 20 and memory["growth_mb"] <= 1024
    assert memory["api_growth_mb"] <= 1024
    assert result["server_exit_status"] == 0
