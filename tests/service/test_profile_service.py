"""scripts/profile_service.py as a user runs it, with tiny numbers: the tiny model scored
in-process, then over HTTP (the service in the script's process, a client process of its
own, 127.0.0.1), each level with the backend's busy share and the sampled stacks of the
service's threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "scripts/profile_service.py", *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_profile_reports_in_process_and_http_levels_with_busy_share(tmp_path, tiny_model_dir):
    records, samples = tmp_path / "profile.jsonl", tmp_path / "samples.txt"
    done = run(
        "--model", str(tiny_model_dir), "--levels", "1x3,3x3", "--requests", "2",
        "--min-words", "10", "--max-words", "60", "--max-model-len", "512",
        "--json-out", str(records), "--samples", str(samples),
        "--server-option", "batch_wait_ms=1",
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"

    lines = [json.loads(line) for line in records.read_text().splitlines()]
    inproc, *http = lines
    assert inproc["mode"] == "in-process" and inproc["docs"] == 3 and inproc["p50_ms"] > 0
    assert [(r["mode"], r["clients"], r["docs"]) for r in http] == [("http", 1, 3), ("http", 3, 3)]
    for record in http:
        assert record["backend"] == "qwen3_transformers" and record["device"] == "cpu"
        assert record["overlap_calls"] is False  # a CPU backend computes as it starts a call
        assert record["ok"] == record["requests_sent"] == max(2, 4 * record["clients"])
        assert record["failed"] == 0 and record["tokens_per_pair"] > 0
        # every document the clients sent went through the timed backend calls
        assert record["backend_calls"] >= 1
        assert record["backend_docs"] == 3 * record["ok"]
        assert record["docs_per_call"] == round(record["backend_docs"] / record["backend_calls"], 1)
        assert 0 < record["busy_share"] <= 1.05
    assert http[0]["docs_per_call"] == 3  # one client: one request a call
    text = samples.read_text()
    assert "==== 1x3" in text and "==== 3x3" in text
    assert "-- thread rerank-scheduler:" in text
    assert "http 3x3:" in done.stdout and "backend busy" in done.stdout


def test_bad_levels_are_an_argument_error():
    done = run("--model", "unused", "--levels", "3")
    assert done.returncode == 2 and "expected CLIENTSxDOCS" in done.stderr
    done = run("--model", "unused", "--levels", "none")
    assert done.returncode == 2 and "at least one level" in done.stderr
