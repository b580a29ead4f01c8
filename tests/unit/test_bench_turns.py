"""scripts/bench_vllm_overhead.py's timing: the forms take turns, one run each a repeat."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_vllm_overhead.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_vllm_overhead", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forms_take_turns_and_the_fastest_run_of_each_counts():
    ran: list[str] = []
    pauses = {"slow": [0.03, 0.01], "fast": [0.002, 0.004]}

    def form(name: str):
        def run() -> None:
            ran.append(name)
            time.sleep(pauses[name][sum(n == name for n in ran) - 1])

        return run

    rates = load_script().best_rates(10, 2, {"slow": form("slow"), "fast": form("fast")})
    assert ran == ["slow", "fast", "slow", "fast"]
    # the fastest of each form's runs counts: ~0.01 s (not 0.03) and ~0.002 s, 10 pairs
    assert 10 / 0.025 < rates["slow"] <= 10 / 0.01
    assert rates["slow"] < rates["fast"] <= 10 / 0.002
