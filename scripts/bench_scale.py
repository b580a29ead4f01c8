"""Scale-out benchmark of the HTTP service: one process, Ray Serve replicas, vLLM data parallel.

    python scripts/bench_scale.py --model DIR [--backend qwen3_transformers]
        [--scenarios single,ray-1,ray-2] [--vllm-dp] [--concurrency 1,16,64] [--docs 100]
        [--requests N] [--max-seconds 60] [--start-timeout 600] [--out bench-scale.json]
    python scripts/bench_scale.py --report a.json b.json   # tables of earlier runs, merged

Each scenario is a config file written to a temporary folder from the base config
(--config, default config/config.yaml), served by `python -m reranker.cli serve --config
FILE --port P` (this interpreter or --python, a free port on 127.0.0.1, its own process
group, its output in OUT.SCENARIO.log next to --out or in --log-dir) and measured over
HTTP, one scenario after the other:

    single     the backend in one process (no scale section)
    ray-N      the same backend on Ray Serve with N replicas of one GPU each
               (services.rerank.scale: {engine: ray, replicas: N, gpus_per_replica: 1})
    vllm-dpN   qwen3_vllm in one process with data_parallel_size: N (--vllm-dp adds
               vllm-dp1 and vllm-dp2 to the default list)

Per scenario: wait for GET /ready == 200 (--start-timeout; a scenario whose process exits
or does not get ready fails with its log tail and the run goes on), send a few warm-up
requests, then for each level (clients x documents per request) run that many closed-loop
clients (threads, one keep-alive httpx client each) posting /rerank until the level's
requests are sent (--requests, default max(32, 4 x clients)) or --max-seconds have passed
(requests in flight then finish and count). The queue bounds of the server section are
raised where needed so that every client's request is admitted. Then SIGTERM to the
service (it drains), SIGKILL to its process group after 60 s, and every process it had
started (Ray's included) is waited for before the next scenario.

The workload is fixed (--seed): each request is a query of its own and documents drawn
from a pool of texts of 100 to 1250 words (log-uniform; about 540 prompt tokens per pair
on average with the Qwen3 tokenizer and template, kept per level in the JSON); every
scenario receives identical requests, each level its own.

Output: a Markdown table (scenario, clients, docs, pairs/s = documents scored / wall time,
p50 and p99 latency, failed requests) and speed-ups (ray-N vs ray-1 and vllm-dpN vs
vllm-dp1 pairs/s per level; ray-N p50 vs single with one client), plus --out, a JSON file
with every level's numbers, the configs, and the environment (GPUs from nvidia-smi,
versions of torch, transformers, vllm, ray), rewritten after each level. Exit status 0
when every scenario ran, 1 when one could not start or failed, 2 on bad arguments.
Traffic goes only to 127.0.0.1.

Smoke test on a CPU (tiny model):
    HF_HUB_OFFLINE=1 python scripts/bench_scale.py --model .cache/tiny-qwen3 \\
        --scenarios single --concurrency 1,4 --docs 10 --max-seconds 10
Without GPUs, add --gpus-per-replica 0 to run ray-N scenarios on CPU replicas.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reranker.bench.http_load import (  # noqa: E402
    MAX_WORDS,
    MIN_WORDS,
    Requests,
    Service,
    drive,
    environment,
    fmt,
    free_port,
    int_list,
    key_values,
    log_tail,
    queue_needs,
    run_levels,
    spawn,
    stop_service,
    wait_ready,
)
from reranker.config import ServerSettings  # noqa: E402

DEFAULT_SCENARIOS = "single,ray-1,ray-2"
SCENARIO_RE = re.compile(r"^(single|ray-(\d+)|vllm-dp(\d+))$")
VLLM_BACKEND = "qwen3_vllm"
WARMUP_CLIENTS = 4


# ---------------------------------------------------------------- the service


def start_service(python: str, config_path: Path, port: int, log_path: Path) -> Service:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RERANK_CONFIG", "RERANK_MODEL", "RERANK_BACKEND"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    command = [
        python,
        "-m",
        "reranker.cli",
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return spawn(command, f"http://127.0.0.1:{port}", log_path, env)


# ---------------------------------------------------------------- scenarios and configs


@dataclass
class Scenario:
    name: str
    backend: str
    replicas: int | None = None  # ray-N
    data_parallel: int | None = None  # vllm-dpN


def parse_scenarios(raw: str, vllm_dp: bool) -> list[Scenario]:
    names = [x.strip() for x in raw.split(",") if x.strip()]
    if vllm_dp:
        names += [n for n in ("vllm-dp1", "vllm-dp2") if n not in names]
    out = []
    for name in names:
        m = SCENARIO_RE.match(name)
        if not m:
            raise ValueError(f"unknown scenario {name!r} (single, ray-N, vllm-dpN)")
        if m.group(2):
            out.append(Scenario(name, "", replicas=int(m.group(2))))
        elif m.group(3):
            out.append(Scenario(name, VLLM_BACKEND, data_parallel=int(m.group(3))))
        else:
            out.append(Scenario(name, ""))
    return out


def scenario_config(
    base: dict[str, Any],
    scenario: Scenario,
    args: argparse.Namespace,
    port: int,
    needs: dict[str, int],
) -> dict[str, Any]:
    config = copy.deepcopy(base) or {}
    rerank = config.setdefault("services", {}).setdefault("rerank", {})
    backend = scenario.backend or args.backend
    rerank["backend"] = backend
    rerank.pop("scale", None)
    options = rerank.setdefault("backends", {}).setdefault(backend, {}) or {}
    rerank["backends"][backend] = options
    if args.model:
        model = Path(args.model)
        options["model_name"] = str(model.resolve()) if model.exists() else args.model
    if scenario.data_parallel is not None:
        options["data_parallel_size"] = scenario.data_parallel
        options.update(key_values(args.vllm_option))
    else:
        options.update(key_values(args.backend_option))
    server = rerank.setdefault("server", {}) or {}
    rerank["server"] = server
    server.update({"host": "127.0.0.1", "port": port})
    # Closed-loop clients must all be admitted: queue bounds at least what they can hold.
    for key, need in needs.items():
        current = server.get(key, ServerSettings.model_fields[key].default)
        if int(current) < need:
            server[key] = need
    server.update(key_values(args.server_option))
    if scenario.replicas is not None:
        scale: dict[str, Any] = {
            "engine": "ray",
            "replicas": scenario.replicas,
            "gpus_per_replica": args.gpus_per_replica,
        }
        if args.ray_address:
            scale["address"] = args.ray_address
        scale.update(key_values(args.scale_option))
        rerank["scale"] = scale
    return config


def run_scenario(
    scenario: Scenario,
    base: dict[str, Any],
    args: argparse.Namespace,
    requests_by_level: list[tuple[int, int, list[dict[str, Any]]]],
    warmup: list[dict[str, Any]],
    folder: Path,
    log_dir: Path,
    on_level: Any,
) -> dict[str, Any]:
    port = free_port()
    config = scenario_config(base, scenario, args, port, queue_needs(requests_by_level))
    config_path = folder / f"{scenario.name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = log_dir / f"{Path(args.out).stem}.{scenario.name}.log"
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "backend": config["services"]["rerank"]["backend"],
        "config": config,
        "log": str(log_path),
        "levels": [],
        "status": "starting",
    }
    print(f"== {scenario.name}: starting (log {log_path})", file=sys.stderr, flush=True)
    started = time.monotonic()
    python = (args.vllm_python or args.python) if scenario.data_parallel else args.python
    service = start_service(python or sys.executable, config_path, port, log_path)
    try:
        why = wait_ready(service, args.start_timeout)
        result["startup_s"] = round(time.monotonic() - started, 1)
        if why:
            result.update(status="failed", error=why)
            return result
        print(f"== {scenario.name}: ready in {result['startup_s']} s", file=sys.stderr, flush=True)
        outcomes, _, _ = drive(
            service.url, warmup, WARMUP_CLIENTS, args.max_seconds, args.request_timeout
        )
        result["warmup"] = dict(Counter(str(o.status) for o in outcomes))
        if not any(o.status == 200 for o in outcomes):
            result.update(
                status="failed", error=f"every warm-up request failed: {result['warmup']}"
            )
            return result
        if not run_levels(
            service, requests_by_level, args.max_seconds, args.request_timeout, result, on_level
        ):
            return result
        result["status"] = "ok"
        return result
    finally:
        result["stop"] = stop_service(service)
        if result["status"] != "ok":
            result["log_tail"] = log_tail(log_path)
            print(
                f"== {scenario.name} FAILED: {result.get('error')}\n--- {log_path} (tail)\n"
                f"{result['log_tail']}\n---",
                file=sys.stderr,
                flush=True,
            )
        elif result["stop"]["exit_code"] not in (0, None):
            print(
                f"== {scenario.name}: exit status {result['stop']['exit_code']} after SIGTERM",
                file=sys.stderr,
            )


# ---------------------------------------------------------------- environment and report


def comparisons(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ray-N vs ray-1 and vllm-dpN vs vllm-dp1 pairs/s per level; ray-N p50 vs single at 1
    client."""
    levels = {
        s["scenario"]: {(lv["clients"], lv["docs"]): lv for lv in s.get("levels", [])}
        for s in scenarios
    }
    out: list[dict[str, Any]] = []

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    for family, one in (("ray-", "ray-1"), ("vllm-dp", "vllm-dp1")):
        for name in levels:
            if not name.startswith(family) or name == one or one not in levels:
                continue
            for key, lv in levels[name].items():
                ref = levels[one].get(key)
                if ref:
                    out.append(
                        {
                            "what": f"{name} / {one} pairs/s",
                            "clients": key[0],
                            "docs": key[1],
                            "ratio": ratio(lv["pairs_per_s"], ref["pairs_per_s"]),
                        }
                    )
    if "single" in levels:
        for name in levels:
            if not name.startswith("ray-"):
                continue
            for key, lv in levels[name].items():
                ref = levels["single"].get(key)
                if key[0] == 1 and ref and lv["p50_ms"] and ref["p50_ms"]:
                    out.append(
                        {
                            "what": f"{name} / single p50 latency",
                            "clients": 1,
                            "docs": key[1],
                            "ratio": ratio(lv["p50_ms"], ref["p50_ms"]),
                            "delta_ms": round(lv["p50_ms"] - ref["p50_ms"], 1),
                        }
                    )
    return out


def report(result: dict[str, Any]) -> str:
    rows = [
        "| scenario | clients | docs | pairs/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result["scenarios"]:
        if not s.get("levels"):
            why = str(s.get("error", s["status"])).replace("|", "/")[:100]
            rows.append(f"| {s['scenario']} | - | - | - | - | - | {why} |")
        for lv in s.get("levels", []):
            failed = str(lv["failed"])
            if lv["failed"]:
                bad = {k: v for k, v in lv["statuses"].items() if k != "200"}
                failed += " (" + ", ".join(f"{k}: {v}" for k, v in bad.items()) + ")"
            rows.append(
                f"| {s['scenario']} | {lv['clients']} | {lv['docs']} | {fmt(lv['pairs_per_s'])}"
                f" | {fmt(lv['p50_ms'])} | {fmt(lv['p99_ms'])} | {failed} |"
            )
    comps = result.get("comparisons") or []
    if comps:
        rows += ["", "| speed-up | clients | docs | ratio |", "| --- | ---: | ---: | ---: |"]
        for c in comps:
            value = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
            if "delta_ms" in c:
                value += f" ({c['delta_ms']:+.1f} ms)"
            rows.append(f"| {c['what']} | {c['clients']} | {c['docs']} | {value} |")
    env = result.get("environment", {})
    gpus = "; ".join(env.get("gpus", [])) or "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    wl = result.get("workload", {})
    rows += [
        "",
        f"{gpus}; {versions}; workload seed {wl.get('seed')}, "
        f"{wl.get('min_words')}-{wl.get('max_words')} words per document",
    ]
    return "\n".join(rows)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    ap.add_argument("--config", default=str(ROOT / "config/config.yaml"), help="base config")
    ap.add_argument("--model", help="model_name for the backends (hub id or local dir)")
    ap.add_argument("--backend", default="qwen3_transformers", help="single and ray-N backend")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=f"({DEFAULT_SCENARIOS})")
    ap.add_argument("--vllm-dp", action="store_true", help="add vllm-dp1 and vllm-dp2")
    ap.add_argument("--concurrency", type=int_list, default=[1, 16, 64], help="(1,16,64)")
    ap.add_argument("--docs", type=int_list, default=[100], help="documents per request (100)")
    ap.add_argument("--requests", type=int, help="requests per level (max(32, 4 x clients))")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time bound per level (60)")
    ap.add_argument("--warmup", type=int, default=8, help="warm-up requests (8, 4 clients)")
    ap.add_argument("--start-timeout", type=float, default=600.0, help="/ready wait (600 s)")
    ap.add_argument("--request-timeout", type=float, default=600.0, help="per request (600 s)")
    ap.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    ap.add_argument("--gpus-per-replica", type=float, default=1.0, help="ray-N (1; 0: CPU)")
    ap.add_argument("--ray-address", help="scale.address for ray-N (default: a local Ray)")
    ap.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--vllm-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--server-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scale-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--python", help="interpreter of the service (default: this one)")
    ap.add_argument("--vllm-python", help="interpreter for vllm-dpN (default: --python)")
    ap.add_argument("--out", default="bench-scale.json", help="JSON results (bench-scale.json)")
    ap.add_argument("--log-dir", help="service logs (default: the folder of --out)")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="print tables of earlier runs")
    args = ap.parse_args(argv)
    try:
        args.scenario_list = parse_scenarios(args.scenarios, args.vllm_dp)
        for items in (args.backend_option, args.vllm_option, args.server_option, args.scale_option):
            key_values(items)
    except ValueError as exc:
        ap.error(str(exc))
    if not args.report and not Path(args.config).is_file():
        ap.error(f"no config file {args.config}")
    return args


def print_reports(paths: list[str]) -> int:
    merged: dict[str, Any] = {"scenarios": []}
    for path in paths:
        data = json.loads(Path(path).read_text())
        merged.setdefault("environment", data.get("environment", {}))
        merged.setdefault("workload", data.get("workload", {}))
        merged["scenarios"] += data.get("scenarios", [])
    merged["comparisons"] = comparisons(merged["scenarios"])
    print(report(merged))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return print_reports(args.report)
    scenarios: list[Scenario] = args.scenario_list
    base = yaml.safe_load(Path(args.config).read_text()) or {}
    out_path = Path(args.out).resolve()
    log_dir = Path(args.log_dir).resolve() if args.log_dir else out_path.parent
    log_dir.mkdir(parents=True, exist_ok=True)

    levels = [(c, d) for d in args.docs for c in args.concurrency]
    counts = [args.requests or max(32, 4 * c) for c, _ in levels]
    requests = Requests(args.seed, max(args.docs), args.warmup + sum(counts))
    warmup = requests.take(args.warmup, max(args.docs))
    by_level = [(c, d, requests.take(n, d)) for (c, d), n in zip(levels, counts, strict=True)]

    result: dict[str, Any] = {
        "environment": environment(),
        "args": {k: v for k, v in vars(args).items() if k not in ("report", "scenario_list")},
        "workload": {
            "seed": args.seed,
            "min_words": MIN_WORDS,
            "max_words": MAX_WORDS,
            "pool_docs": len(requests.pool),
            "warmup_requests": args.warmup,
            "levels": [
                {"clients": c, "docs": d, "requests": n}
                for (c, d), n in zip(levels, counts, strict=True)
            ],
        },
        "scenarios": [],
    }

    def save() -> None:
        result["comparisons"] = comparisons(result["scenarios"])
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out_path)

    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for scenario in scenarios:
            result["scenarios"].append({"scenario": scenario.name, "status": "starting"})

            def on_level(partial: dict[str, Any]) -> None:
                result["scenarios"][-1] = partial
                save()

            try:
                done = run_scenario(
                    scenario, base, args, by_level, warmup, Path(tmp), log_dir, on_level
                )
            except KeyboardInterrupt:
                result["scenarios"][-1]["status"] = "interrupted"
                save()
                raise
            result["scenarios"][-1] = done
            failed |= done["status"] != "ok"
            save()
    print(report(result))
    print(f"\nJSON: {out_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
