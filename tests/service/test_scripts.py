"""scripts/start_reranker.sh and scripts/setup_reranker_venv.sh, run as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_helpers import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the venv running these tests


def test_start_script_serves_with_the_backend_venv_and_forwards_sigterm(tmp_path, tiny_model_dir):
    """Started from another folder with a config named relative to it, as a user may."""
    if not VENV.name.startswith(".venv-reranker-"):
        pytest.skip("run from a .venv-reranker-<backend> venv (scripts/test.sh does)")
    backend = VENV.name.removeprefix(".venv-reranker-")
    (tmp_path / "mine.yaml").write_text(
        f"services:\n  rerank:\n    backend: {backend}\n    server:\n"
        "      max_docs_per_request: 3\n"
    )
    port = free_port()
    env = dict(os.environ, RERANK_MODEL=str(tiny_model_dir), RERANK_VENV_ROOT=str(VENV.parent))
    env.pop("RERANK_BACKEND", None)
    env.pop("RERANK_CONFIG", None)
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts/start_reranker.sh"), "--config", "mine.yaml"]
        + ["--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", 120, proc)
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json()
        assert ready["backend"] == backend
        too_many = httpx.post(
            f"http://127.0.0.1:{port}/rerank",
            json={"query": "q", "documents": ["a", "b", "c", "d"]},
            timeout=30,
        )
        assert too_many.status_code == 400, too_many.text  # the config's limit holds
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # the drained stop's status, passed through
        out = proc.stdout.read() if proc.stdout else ""
        assert f"venv={VENV}" in out
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("flag", ["--backend", "--config", "--port", "--model"])
def test_start_script_names_a_flag_without_its_value(flag):
    proc = subprocess.run(
        ["bash", "scripts/start_reranker.sh", flag],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {flag} needs a value (see --help)"


def test_start_script_refuses_a_missing_venv(tmp_path):
    proc = subprocess.run(
        ["bash", "scripts/start_reranker.sh", "--backend", "qwen3_vllm_score"],
        cwd=REPO,
        env=dict(os.environ, RERANK_VENV_ROOT=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3
    assert "scripts/setup_reranker_venv.sh qwen3_vllm_score" in proc.stderr


def test_start_script_reads_the_backend_from_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("services:\n  rerank:\n    backend: qwen3_vllm  # comment\n")
    proc = subprocess.run(
        ["bash", "scripts/start_reranker.sh", "--config", str(config)],
        cwd=REPO,
        env=dict(os.environ, RERANK_VENV_ROOT=str(tmp_path), RERANK_BACKEND=""),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3 and "setup_reranker_venv.sh qwen3_vllm" in proc.stderr


def test_setup_script_rejects_unknown_backends():
    proc = subprocess.run(
        ["bash", "scripts/setup_reranker_venv.sh", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown backend 'nope'" in proc.stderr and "qwen3_transformers" in proc.stderr
    usage = subprocess.run(
        ["bash", "scripts/setup_reranker_venv.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["qwen3_transformers", "--bogus"], "unknown option '--bogus'"),
        (["qwen3_transformers", "--with", "ray", "--bogus", "--dev"], "unknown option '--bogus'"),
        (["qwen3_transformers", "--dev", "--with", "spark"], "only 'ray' can be added"),
        (["qwen3_transformers", "--with"], "--with needs a value"),
        (["--dev", "qwen3_transformers"], "the backend name comes first"),
    ],
)
def test_setup_script_refuses_bad_options_before_installing(tmp_path, args, message):
    proc = subprocess.run(
        ["bash", "scripts/setup_reranker_venv.sh", *args],
        cwd=REPO,
        env=dict(os.environ, RERANK_VENV_ROOT=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "usage:" in proc.stderr and "--with ray" in proc.stderr
    assert not list(tmp_path.iterdir())  # refused before any venv was made


def test_setup_script_help_lists_its_options():
    proc = subprocess.run(
        ["bash", "scripts/setup_reranker_venv.sh", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and "[--dev] [--with ray]" in proc.stdout
