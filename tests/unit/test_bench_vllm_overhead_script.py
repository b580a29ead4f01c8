"""scripts/bench_vllm_overhead.py without an engine: the forms take turns and the fastest
run of each counts (on a scripted clock: exact rates); the stream settings are checked."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_vllm_overhead.py"


@functools.cache
def load_script():
    spec = importlib.util.spec_from_file_location("bench_vllm_overhead", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forms_take_turns_and_the_fastest_run_of_each_counts():
    now = [0.0]
    ran: list[str] = []
    seconds = {"slow": [4.0, 2.0, 5.0], "fast": [0.5, 1.0, 0.25]}

    def form(name: str):
        def run() -> None:
            now[0] += seconds[name][sum(n == name for n in ran)]
            ran.append(name)

        return run

    forms = {"slow": form("slow"), "fast": form("fast")}
    rates = load_script().best_rates(10, 3, forms, clock=lambda: now[0])
    assert ran == ["slow", "fast"] * 3
    assert rates == {"slow": 10 / 2.0, "fast": 10 / 0.25}


def test_stream_settings_are_checked_before_an_engine_starts(capsys):
    parse = load_script().parse_args
    args = parse(["--model", "m", "--docs", "9", "--stream-docs", "8", "--stream-head-docs", "4"])
    assert (args.stream_docs, args.stream_head_docs) == (8, 4)
    for bad in (
        ["--docs", "8", "--stream-head-docs", "4"],  # no first chunk to split off
        ["--stream-docs", "0"],
        ["--stream-head-docs", "-1"],
    ):
        try:
            parse(["--model", "m", *bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"accepted {bad}")
        assert "--stream-" in capsys.readouterr().err
