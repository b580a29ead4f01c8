"""A new user's first commands, run as the README gives them, in the venv the setup script
made: the CLI names what it does, a missing model fails fast with the command that builds
the offline one, and the A/B comparison has what it needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from server_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv running these tests
# A hub that is not there: connections to a closed port on this machine are refused.
NO_HUB = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": ""}
# Well under the minute of download retries a missing model cost; the commands themselves
# fail in about a second here (most of it Python starting).
FAST_S = 15.0


def reranker(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """Run the venv's `reranker` command from the repo root; (process, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "reranker"), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.perf_counter() - start


def no_hub_env(tmp_path: Path) -> dict[str, str]:
    return {**NO_HUB, "HF_HOME": str(tmp_path / "hf-home"), "RERANK_MODEL": ""}


def assert_names_the_offline_model(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "build-test-model .cache/tiny-qwen3" in lines[0]
    assert "RERANK_MODEL=.cache/tiny-qwen3" in lines[0]
    command = re.search(r"`([^`]*) build-test-model", lines[0])
    assert command and Path(REPO / command.group(1)).resolve() == (BIN / "reranker").resolve()
    assert "Retrying" not in stderr


def test_help_lists_every_command():
    proc, _ = reranker("--help")
    assert proc.returncode == 0
    first = " ".join(proc.stdout.split("\n\n")[1].split())
    for command in ("backends", "score", "bench", "compare", "serve", "build-test-model"):
        assert command in first


def test_backends_runs_from_the_venv():
    proc, _ = reranker("backends")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^qwen3_transformers\s+ok$", proc.stdout, re.M)


@pytest.mark.parametrize(
    "args",
    [
        ("score", "capital of France?", "Paris is the capital."),
        ("bench", "--queries", "1", "--docs", "2"),
        ("serve", "--port", "0"),
        (
            "compare",
            "--a",
            "qwen3_transformers",
            "--b",
            "qwen3_transformers",
            "--data",
            "data/sample/rerank_sample.jsonl",
        ),
    ],
    ids=["score", "bench", "serve", "compare"],
)
def test_without_the_hub_every_command_fails_fast_naming_the_offline_model(tmp_path, args):
    env = {**no_hub_env(tmp_path), "RERANK_VENV_ROOT": str(BIN.parent.parent)}
    proc, seconds = reranker(*args, *(["--no-progress"] if args[0] == "compare" else []), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert seconds < FAST_S
    assert_names_the_offline_model(proc.stderr)


def test_start_script_fails_fast_without_the_hub(tmp_path):
    if not BIN.parent.name.startswith(".venv-reranker-"):
        pytest.skip("run from a .venv-reranker-<backend> venv (scripts/test.sh does)")
    backend = BIN.parent.name.removeprefix(".venv-reranker-")
    env = {**os.environ, **no_hub_env(tmp_path), "RERANK_VENV_ROOT": str(BIN.parent.parent)}
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", "scripts/start_reranker.sh", "--backend", backend, "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.perf_counter() - start < FAST_S
    assert "Uvicorn running" not in proc.stdout + proc.stderr
    assert_names_the_offline_model(proc.stderr)


def test_a_missing_model_folder_says_so(tmp_path):
    proc, _ = reranker("score", "q", "d", env={"RERANK_MODEL": str(tmp_path / "nope")})
    assert proc.returncode == 2
    assert f"model folder {tmp_path / 'nope'} does not exist" in proc.stderr


def test_hub_offline_without_a_cached_copy_says_so(tmp_path):
    env = {**no_hub_env(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc, seconds = reranker("score", "q", "d", env=env)
    assert proc.returncode == 2 and seconds < FAST_S
    assert "not in the local hub cache and HF_HUB_OFFLINE is set" in proc.stderr
    assert_names_the_offline_model(proc.stderr)


def test_the_offline_model_the_message_names_builds_and_scores(tmp_path):
    # What the error tells the user to run, literally (in a scratch folder).
    build, _ = reranker("build-test-model", str(tmp_path / ".cache" / "tiny-qwen3"), timeout=300)
    assert build.returncode == 0, build.stderr
    model = str(tmp_path / ".cache" / "tiny-qwen3")
    proc, _ = reranker("score", "capital of France?", "Paris.", env={"RERANK_MODEL": model})
    assert proc.returncode == 0, proc.stderr
    assert '"dtype": "float32"' in proc.stdout and '"device": "cpu"' in proc.stdout


def test_the_venv_the_setup_script_makes_can_run_compare():
    """A user's venv (no --dev) gets the compare extra, which covers what compare imports."""
    from reranker.cli import COMPARE_MODULES

    setup = (REPO / "scripts" / "setup_reranker_venv.sh").read_text()
    user_extras = re.search(r'^extras="([^"]+)"$', setup, re.M)
    assert user_extras and "compare" in user_extras.group(1).split(",")
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["compare"]
    packages = {re.split(r"[<>=\[ ]", req)[0] for req in extra}
    assert set(COMPARE_MODULES) <= packages
    imported = set()
    for source in (REPO / "reranker" / "compare").glob("*.py"):
        imported |= set(re.findall(r"^\s*(?:from|import) (\w+)", source.read_text(), re.M))
    third_party = imported - set(sys.stdlib_module_names) - {"reranker", "__future__"}
    assert third_party <= set(COMPARE_MODULES)


def test_bench_on_cpu_says_what_it_times_and_how_to_go_quicker(tiny_model_dir):
    proc, _ = reranker(
        "bench", "--model", str(tiny_model_dir), "--queries", "1", "--docs", "40",
        "--max-words", "600", "--repeat", "1", "--warmup", "0", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ready in" in proc.stderr and "timing 0 warm-up + 1 runs of 40 pairs" in proc.stderr
    assert "reranker bench --queries 2 --docs 16" in proc.stderr
    assert "pairs/s" in proc.stdout
