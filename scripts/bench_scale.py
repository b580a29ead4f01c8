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
import contextlib
import copy
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reranker.bench.workload import make_workload  # noqa: E402
from reranker.config import ServerSettings  # noqa: E402

DEFAULT_SCENARIOS = "single,ray-1,ray-2"
SCENARIO_RE = re.compile(r"^(single|ray-(\d+)|vllm-dp(\d+))$")
VLLM_BACKEND = "qwen3_vllm"
MIN_WORDS, MAX_WORDS = 100, 1250  # as `reranker bench`: ~500 prompt tokens per pair
WARMUP_CLIENTS = 4


# ---------------------------------------------------------------- small helpers


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def int_list(raw: str) -> list[int]:
    values = [int(x) for x in raw.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas: {raw}")
    return values


def option_value(raw: str) -> Any:
    """KEY=VALUE's value: JSON when it parses (numbers, true, null, lists), else a string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def key_values(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key] = option_value(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------- processes (Linux /proc)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks), zombies left out."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state, ppid, ..., starttime (20th)
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), fields[19])
    return table


def process_tree(root: int) -> dict[int, str]:
    """The descendants of ``root`` (and itself): pid -> start time, to recognise them later."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return found


def still_alive(tree: dict[int, str]) -> list[int]:
    table = _proc_table()
    return [pid for pid, start in tree.items() if pid in table and table[pid][1] == start]


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    config_path: Path


def start_service(python: str, config_path: Path, port: int, log_path: Path) -> Service:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RERANK_CONFIG", "RERANK_MODEL", "RERANK_BACKEND"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            [
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
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group
        )
    finally:
        log.close()
    return Service(proc, f"http://127.0.0.1:{port}", log_path, config_path)


def wait_ready(service: Service, seconds: float) -> str | None:
    """None once /ready answers 200, else why not."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{service.url}/ready").status_code == 200:
                    return None
            code = service.proc.poll()
            if code is not None:
                return f"the service exited with status {code} before it was ready"
            time.sleep(0.5)
    return f"/ready did not answer 200 within {seconds:.0f} s"


def stop_service(service: Service, grace_s: float = 60.0) -> dict[str, Any]:
    """SIGTERM to the service (it drains and stops what it started); SIGKILL to its process
    group after ``grace_s``; then wait until every process it had started is gone (Ray's
    daemons and workers included), killing any still there after 30 s."""
    proc = service.proc
    started = time.monotonic()
    tree = process_tree(proc.pid)
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    deadline = time.monotonic() + 30
    left = still_alive(tree)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = still_alive(tree)
    for pid in left:  # outside the group and still there: not ours to keep
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return {
        "exit_code": proc.returncode,
        "killed": killed,
        "leftover_processes_killed": len(left),
        "stop_s": round(time.monotonic() - started, 1),
    }


# ---------------------------------------------------------------- workload and load


class Requests:
    """The fixed requests: a query of its own each, documents drawn (without repeats in a
    request) from one pool of texts. ``take(n, docs)`` hands out the next n requests, so
    each level gets requests no earlier level sent, the same in every scenario."""

    def __init__(self, seed: int, max_docs: int, total: int) -> None:
        pool_size = max(2000, 2 * max_docs)
        pool = make_workload(1, pool_size, MIN_WORDS, MAX_WORDS, seed).docs[0]
        self.pool = pool
        self.queries = make_workload(total, 0, seed=seed + 1).queries
        self.seed = seed
        self.next = 0

    def take(self, n: int, docs: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            i = self.next % len(self.queries)
            rng = random.Random(self.seed * 1_000_003 + self.next)
            out.append({"query": self.queries[i], "documents": rng.sample(self.pool, docs)})
            self.next += 1
        return out


@dataclass
class Outcome:
    status: int | str  # HTTP status or exception name
    seconds: float
    tokens: int


def post(client: httpx.Client, url: str, body: dict[str, Any]) -> Outcome:
    started = time.perf_counter()
    try:
        r = client.post(f"{url}/rerank", json=body)
    except httpx.HTTPError as exc:
        return Outcome(type(exc).__name__, time.perf_counter() - started, 0)
    seconds = time.perf_counter() - started
    tokens = 0
    if r.status_code == 200:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            tokens = int(r.json()["usage"]["prompt_tokens"])
    return Outcome(r.status_code, seconds, tokens)


def drive(
    url: str,
    bodies: list[dict[str, Any]],
    clients: int,
    max_seconds: float,
    timeout_s: float,
) -> tuple[list[Outcome], float, int]:
    """Closed loop: ``clients`` threads, each with its own keep-alive client, take the next
    request until all are sent or ``max_seconds`` have passed. Returns the outcomes, the
    wall time (first send to last answer) and how many requests were not sent."""
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    deadline = started + max_seconds

    def worker() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(timeout=timeout_s, limits=limits) as client:
            while True:
                with lock:
                    if time.perf_counter() > deadline:
                        return
                    i = next(cursor, None)
                if i is None:
                    return
                outcome = post(client, url, bodies[i])
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return outcomes, wall, len(bodies) - len(outcomes)


def summarize_level(
    clients: int, docs: int, outcomes: list[Outcome], wall: float, unsent: int
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200]
    lat = [o.seconds for o in ok]
    statuses = Counter(str(o.status) for o in outcomes)
    tokens = sum(o.tokens for o in ok)
    return {
        "clients": clients,
        "docs": docs,
        "requests_sent": len(outcomes),
        "requests_unsent": unsent,
        "ok": len(ok),
        "failed": len(outcomes) - len(ok),
        "statuses": dict(sorted(statuses.items())),
        "wall_s": round(wall, 3),
        "pairs_per_s": round(len(ok) * docs / wall, 2) if wall > 0 else None,
        "requests_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "p50_ms": round(1000 * pct(lat, 50), 1) if lat else None,
        "p90_ms": round(1000 * pct(lat, 90), 1) if lat else None,
        "p99_ms": round(1000 * pct(lat, 99), 1) if lat else None,
        "mean_ms": round(1000 * sum(lat) / len(lat), 1) if lat else None,
        "max_ms": round(1000 * max(lat), 1) if lat else None,
        "tokens_per_pair": round(tokens / (len(ok) * docs), 1) if ok and tokens else None,
    }


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


def queue_needs(by_level: list[tuple[int, int, list[dict[str, Any]]]]) -> dict[str, int]:
    """Twice what the clients of the largest level can have queued at once (documents,
    characters; characters bound the token estimate too), and the largest request."""
    docs = chars = per_request = 0
    for clients, n_docs, bodies in by_level:
        biggest = max(len(b["query"]) + sum(len(d) for d in b["documents"]) for b in bodies)
        docs, chars = max(docs, clients * n_docs), max(chars, clients * biggest)
        per_request = max(per_request, n_docs)
    return {
        "max_queue_docs": 2 * docs,
        "max_queue_tokens": 2 * chars,
        "max_queue_chars": 2 * chars,
        "max_docs_per_request": per_request,
    }


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
        for clients, docs, bodies in requests_by_level:
            if service.proc.poll() is not None:
                result.update(status="failed", error=f"exited ({service.proc.returncode})")
                return result
            outcomes, wall, unsent = drive(
                service.url, bodies, clients, args.max_seconds, args.request_timeout
            )
            level = summarize_level(clients, docs, outcomes, wall, unsent)
            result["levels"].append(level)
            print(
                f"   {clients:>4} clients x {docs} docs: {fmt(level['pairs_per_s'])} pairs/s, "
                f"p50 {fmt(level['p50_ms'])} ms, p99 {fmt(level['p99_ms'])} ms, "
                f"{level['ok']} ok, {level['failed']} failed {level['statuses']}",
                file=sys.stderr,
                flush=True,
            )
            on_level(result)
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


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {},
        "gpus": [],
        "rerank_env": {k: v for k, v in os.environ.items() if k.startswith("RERANK_")},
    }
    for name in ("torch", "transformers", "vllm", "ray", "flash-attn", "httpx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env["versions"][name] = importlib.metadata.version(name)
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,memory.total,driver_version",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            env["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
        env["git"] = {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    return env


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
