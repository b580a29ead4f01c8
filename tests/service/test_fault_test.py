"""scripts/fault_test.py as a user runs it, on qwen3_transformers with the tiny model (no
engine process to kill): 20 clients with random disconnects and poison requests; no
innocent request fails, every poison request gets a 4xx, abandoned requests are answered
499. About 25 s on a 2-core CPU. The vLLM run, with an engine kill, is in
tests/vllm/test_fault_test.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def test_fault_test_script_passes_on_transformers(tmp_path, tiny_model_dir):
    if VENV.name != ".venv-reranker-qwen3_transformers":
        pytest.skip("run from the .venv-reranker-qwen3_transformers venv (scripts/test.sh does)")
    out = tmp_path / "fault.json"
    command = [
        *(sys.executable, "scripts/fault_test.py", "--model", str(tiny_model_dir)),
        *("--backend", "qwen3_transformers", "--capacity-clients", "4"),
        *("--capacity-seconds", "3", "--clients", "20", "--seconds", "5"),
        *("--large-docs", "20", "--check-sample", "6", "--min-goodput-share", "0.3"),
        *("--json-out", str(out)),
    ]
    env = dict(os.environ, RERANK_VENV_ROOT=str(VENV.parent))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    faults = result["faults"]
    assert result["passed"], done.stdout
    assert faults["innocent"]["failed"] == 0 and faults["innocent"]["answered"] > 10
    assert faults["scores"]["checked"] > 0 and faults["scores"]["mismatched"] == []
    assert faults["poison"]["rejected_4xx"] == faults["poison"]["sent"] >= 9
    assert "killed_pid" not in faults["engine"]
    assert faults["disconnects"]["left"] > 0 and faults["disconnects"]["server_499"] > 0
    assert result["server_exit_status"] == 0
