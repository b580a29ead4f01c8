"""``reranker score`` with a backend whose packages this environment lacks: exit status
2 and the error that names the backend's setup script, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAKE = Path(__file__).parent / "fake_plugin"


def importable(module: str) -> bool:
    """Whether a fresh interpreter finds ``module`` (not this one: pytest puts tests/ on
    sys.path, where tests/vllm would pass for the vllm module)."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m reranker.cli ARGS`` with the fake plugin installed, offline."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1",
    )
    for variable in ("RERANK_CONFIG", "RERANK_BACKEND", "RERANK_MODEL"):
        env.pop(variable, None)
    return subprocess.run(
        [sys.executable, "-m", "reranker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "backend, missing",
    [
        ("fake_missing", "surely_not_installed_module_xyz"),
        pytest.param(
            "qwen3_vllm",
            "vllm",
            marks=pytest.mark.skipif(
                importable("vllm"), reason="vLLM is installed in this environment"
            ),
        ),
    ],
)
@pytest.mark.parametrize("command", ["score", "bench"])
def test_missing_dependency_names_the_setup_script(command, backend, missing):
    extra = ["q", "d"] if command == "score" else ["--queries", "1", "--docs", "1"]
    out = run_cli(command, "--backend", backend, "--model", "/nonexistent/model", *extra)
    assert out.returncode == 2, out.stderr
    assert f"scripts/setup_reranker_venv.sh {backend}" in out.stderr
    assert f"missing Python packages: {missing}" in out.stderr
    assert "Traceback" not in out.stderr
