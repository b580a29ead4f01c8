"""Fault-injection test of the HTTP service: capacity, then load with faults.

    python scripts/fault_test.py --model .cache/tiny-qwen3 [--backend qwen3_vllm]
        [--clients 200] [--seconds 30] [--json-out result.json]
    python scripts/fault_test.py --url http://127.0.0.1:8000 [--server-pid PID] ...

Without --url it starts the service itself through scripts/start_reranker.sh on
127.0.0.1 (a free port), with a config file written to a temporary folder
(`on_backend_failure: restart`), and stops it with SIGTERM at the end. Traffic goes
only to 127.0.0.1. Two phases, each bounded in requests and seconds:

(a) capacity: --capacity-clients clients in a closed loop for --capacity-seconds:
    pairs/s and latency percentiles of innocent requests of mixed sizes.
(b) faults under load: --clients clients in a closed loop for --seconds of serving time
    (time while the engine is down does not count), sending the same mix, where a share
    of requests (--disconnect-share) is abandoned at a random moment (a client timeout
    or a cancelled request: the connection is closed); --poison requests the service
    must refuse with 4xx (a lone surrogate sent as raw JSON bytes, an oversized
    instruction, documents that are not text, ...); and, on the vLLM backends, a
    `kill -9` of the engine-core process halfway through. Clients behave like real
    ones: on 429 or 503 they wait Retry-After (plus jitter) and retry, at most
    --max-retries times.

It reports innocent requests answered and failed (with their status), a sample of
answers checked against the same request sent alone afterwards, poison requests and
their statuses, disconnects and what the server dropped unscored (its
reranker_dropped_* counters), goodput (innocent pairs/s during phase b) as a share of
phase a's capacity, the server process tree's RSS over time (/proc), and the engine's
restart time. Exit status: 0 when every check passes; 1 when an innocent request failed
or got wrong scores, a poison request got anything but a 4xx, the engine did not come
back, the queue was not empty after the load, RSS grew more than --max-rss-growth-mb,
goodput while the engine was up fell below --min-goodput-share of capacity, or the
server did not exit 0 on SIGTERM; 2 when the service could not be started or reached.
Linux only for the process checks (they read /proc); needs httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ROUTES = ("/rerank", "/v1/score_with_meta", "/score")
_TEXT = (
    "the of and a to in is was for on that with as by at from his her an which this are "
    "were be has have had not but they their its one all also who been more when there "
    "city river capital country population museum history science water energy market "
    "policy school music league season album film company system model data network "
    "protein cell gene disease treatment patient study result method analysis paris "
    "france berlin germany tokyo japan rome italy madrid spain ocean mountain forest "
    "library engine train vaccine immune budget committee delivery review section"
)
WORDS = _TEXT.split()


# ---------------------------------------------------------------- processes (/proc)


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        table[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return table


def descendants(pid: int) -> list[int]:
    """``pid``'s descendant processes, nearest first."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppids().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def describe(pid: int) -> str:
    """The process's name and command line ('' once it is gone)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
    return f"{comm} {cmd}"


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def find_process(root: int, *titles: str) -> int | None:
    """``root`` or its first descendant whose name or command line holds one of
    ``titles``."""
    for pid in [root, *descendants(root)]:
        if any(title in describe(pid) for title in titles):
            return pid
    return None


class MemorySampler(threading.Thread):
    """Samples the RSS of the server process tree every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples: list[tuple[float, str, int, int]] = []  # (t, phase, tree KiB, api KiB)
        self.phase = "start"
        self.stopped = threading.Event()

    def sample(self) -> None:
        tree = [self.root, *descendants(self.root)]
        api = find_process(self.root, "reranker.cli serve", "reranker serve")
        self.samples.append(
            (time.monotonic(), self.phase, sum(rss_kb(p) for p in tree), rss_kb(api or 0))
        )

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


# ---------------------------------------------------------------- requests


def text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def innocent_request(rng: random.Random, large_docs: int) -> tuple[str, dict, int]:
    """(route, body, pairs): 60% 1-5 documents, 35% 10-40, 5% large (100..large_docs)."""
    roll = rng.random()
    if roll < 0.6:
        n = rng.randint(1, 5)
    elif roll < 0.95:
        n = rng.randint(10, 40)
    else:
        n = rng.randint(min(100, large_docs), large_docs)
    docs = [text(rng, 10, 150) for _ in range(n)]
    query = text(rng, 3, 12) + "?"
    route = rng.choice(ROUTES)
    if route == "/rerank":
        body: dict[str, Any] = {"query": query, "documents": docs}
    elif route == "/score":
        body = {"queries": query, "documents": docs}
    else:
        body = {"query": query, "docs": docs}
    return route, body, n


def scores_of(route: str, answer: dict) -> list[float]:
    """The answer's scores in the documents' input order."""
    if route == "/rerank":
        results = sorted(answer["results"], key=lambda r: r["index"])
        return [r["relevance_score"] for r in results]
    if route == "/score":
        return [d["score"] for d in answer["data"]]
    return list(answer["scores"])


def poison_requests() -> list[tuple[str, str, bytes]]:
    """(what, route, raw body) of requests the service must refuse with 4xx."""

    def js(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    docs = ["Paris is the capital of France.", "Bananas are yellow."]
    return [
        # JSON's \ud800 escape: a lone surrogate, which no UTF-8 encoder accepts.
        (
            "lone surrogate in a document",
            "/rerank",
            b'{"query": "capital of France?", "documents": ["Paris.", "a\\ud800b"]}',
        ),
        (
            "lone surrogate in the query",
            "/v1/score_with_meta",
            b'{"query": "q\\udfff", "docs": ["a"]}',
        ),
        (
            "lone surrogate in the instruction",
            "/score",
            b'{"queries": "q", "documents": ["a", "b"], "instruction": "\\ud800"}',
        ),
        (
            "oversized instruction",
            "/rerank",
            js({"query": "q", "documents": docs, "instruction": "x" * 100_000}),
        ),
        ("document that is a number", "/rerank", js({"query": "q", "documents": [docs[0], 17]})),
        (
            "document object without text",
            "/score",
            js({"queries": "q", "documents": [{"title": "t"}]}),
        ),
        ("100,000 documents", "/rerank", js({"query": "q", "documents": ["d"] * 100_000})),
        ("malformed JSON", "/v1/score_with_meta", b'{"query": "q", "docs": ["a"'),
        ("blank query", "/rerank", js({"query": "   ", "documents": docs})),
    ]


def retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:  # an HTTP date: not sent by this service
        return 1.0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (0.0 of nothing)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def metric_values(text_: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    values = {}
    for line in text_.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


@dataclass
class Outcome:
    kind: str  # innocent | disconnect | poison
    route: str
    pairs: int
    status: int | None  # the last HTTP status; None: no answer (transport error, left)
    t_start: float
    t_done: float
    error: str = ""
    retried_503: int = 0
    retried_429: int = 0
    left: bool = False  # a disconnect whose client went away before the answer
    what: str = ""
    done: bool = False  # False: still open when the phase's time bound cut it off


@dataclass
class Phase:
    """Shared state of one phase: its clock, the engine's downtime, what was sent."""

    t0: float
    seconds: float  # serving time under load
    max_requests: int
    hard_deadline: float
    outcomes: list[Outcome] = field(default_factory=list)
    started: int = 0
    down_since: float | None = None
    downtime: float = 0.0
    load_end: float | None = None
    kill_unseen: bool = False  # the engine was killed; /ready has not said 503 yet
    ready_log: list[tuple[float, int]] = field(default_factory=list)
    queue_log: list[tuple[float, float]] = field(default_factory=list)  # (s, documents)

    def up_elapsed(self, now: float) -> float:
        down = self.downtime + (now - self.down_since if self.down_since is not None else 0.0)
        return now - self.t0 - down

    def loading(self) -> bool:
        now = time.monotonic()
        on = (
            (self.down_since is not None or self.up_elapsed(now) < self.seconds)
            and self.started < self.max_requests
            and now < self.hard_deadline
        )
        if not on and self.load_end is None:
            self.load_end = now
        return on


# ---------------------------------------------------------------- the test


class FaultTest:
    def __init__(self, args: argparse.Namespace, url: str, server_root: int | None) -> None:
        self.args = args
        self.url = url
        self.server_root = server_root
        self.sample: list[tuple[str, dict, list[float]]] = []  # answers checked afterwards
        self.seen_200 = 0
        self.rng = random.Random(args.seed)

    def client(self, **options: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.args.api_key}"} if self.args.api_key else {}
        return httpx.AsyncClient(
            base_url=self.url, timeout=self.args.request_timeout, headers=headers, **options
        )

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[fault_test] {message}", file=sys.stderr, flush=True)

    async def innocent(
        self, client: httpx.AsyncClient, phase: Phase, rng: random.Random, record: bool
    ) -> Outcome:
        route, body, pairs = innocent_request(rng, self.args.large_docs)
        out = Outcome("innocent", route, pairs, None, time.monotonic(), 0.0)
        phase.outcomes.append(out)
        while True:
            try:
                r = await client.post(route, json=body)
            except httpx.HTTPError as exc:
                out.error = f"{type(exc).__name__}: {exc}"
                break
            out.status = r.status_code
            if r.status_code in (429, 503) and out.retried_429 + out.retried_503 < (
                self.args.max_retries
            ):
                wait = min(retry_after(r), self.args.max_retry_wait) + rng.uniform(0, 1)
                if time.monotonic() + wait > phase.hard_deadline:
                    out.error = "retries would pass the phase's time bound"
                    break
                if r.status_code == 429:
                    out.retried_429 += 1
                else:
                    out.retried_503 += 1
                await asyncio.sleep(wait)
                continue
            if r.status_code == 200:
                scores = scores_of(route, r.json())
                if len(scores) != pairs or not all(0.0 <= s <= 1.0 for s in scores):
                    out.error = f"malformed answer: {len(scores)} scores for {pairs} documents"
                elif record:
                    self.keep_for_check(route, body, scores)
            else:
                out.error = r.text[:300]
            break
        out.t_done = time.monotonic()
        out.done = True
        return out

    def keep_for_check(self, route: str, body: dict, scores: list[float]) -> None:
        """Reservoir sample of answers to check against the request sent alone."""
        self.seen_200 += 1
        if len(self.sample) < self.args.check_sample:
            self.sample.append((route, body, scores))
        else:
            j = self.rng.randrange(self.seen_200)
            if j < self.args.check_sample:
                self.sample[j] = (route, body, scores)

    async def disconnect(
        self, client: httpx.AsyncClient, phase: Phase, rng: random.Random
    ) -> Outcome:
        """A request abandoned after a random delay: by the client's read timeout or by
        cancelling it; either way the connection is closed."""
        route, body, pairs = innocent_request(rng, self.args.large_docs)
        leave = rng.uniform(0.05, self.args.disconnect_after)
        out = Outcome("disconnect", route, pairs, None, time.monotonic(), 0.0)
        phase.outcomes.append(out)
        try:
            if rng.random() < 0.5:
                r = await client.post(route, json=body, timeout=httpx.Timeout(leave))
            else:
                r = await asyncio.wait_for(client.post(route, json=body), leave)
            out.status = r.status_code
        except (httpx.TimeoutException, TimeoutError):
            out.left = True
        except httpx.HTTPError as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        out.t_done = time.monotonic()
        out.done = True
        return out

    async def client_loop(self, i: int, phase: Phase, disconnect_share: float) -> None:
        rng = random.Random(self.args.seed * 100_003 + i + (7 if disconnect_share else 0))
        async with self.client(limits=httpx.Limits(max_connections=4)) as client:
            while phase.loading():
                phase.started += 1
                if rng.random() < disconnect_share:
                    await self.disconnect(client, phase, rng)
                else:
                    await self.innocent(client, phase, rng, record=disconnect_share > 0)

    async def poison_loop(self, phase: Phase) -> None:
        kinds = poison_requests()
        n = self.args.poison
        async with self.client() as c:
            for k in range(n):
                at = phase.t0 + (k + 0.5) / n * self.args.seconds
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                what, route, raw = kinds[k % len(kinds)]
                out = Outcome("poison", route, 0, None, time.monotonic(), 0.0, what=what)
                phase.outcomes.append(out)
                try:
                    r = await c.post(
                        route, content=raw, headers={"content-type": "application/json"}
                    )
                    out.status = r.status_code
                    if not 400 <= r.status_code < 500:
                        out.error = r.text[:300]
                except httpx.HTTPError as exc:
                    out.error = f"{type(exc).__name__}: {exc}"
                out.t_done = time.monotonic()
                out.done = True

    async def ready_monitor(self, phase: Phase, stop: asyncio.Event) -> None:
        """Poll /ready; keep the engine's downtime (a 503 until the next 200)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as c:
            while not stop.is_set():
                try:
                    status = (await c.get("/ready")).status_code
                except httpx.HTTPError:
                    status = -1  # no answer: neither up nor down
                now = time.monotonic()
                phase.ready_log.append((now - phase.t0, status))
                if status == 503:
                    phase.kill_unseen = False
                    if phase.down_since is None:
                        phase.down_since = now
                elif status == 200 and phase.down_since is not None and not phase.kill_unseen:
                    phase.downtime += now - phase.down_since
                    phase.down_since = None
                if len(phase.ready_log) % 4 == 0:  # the queue's size, about every second
                    with contextlib.suppress(httpx.HTTPError):
                        values = metric_values((await c.get("/metrics")).text)
                        phase.queue_log.append(
                            (now - phase.t0, values.get("reranker_queue_documents", 0.0))
                        )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)

    async def engine_killer(self, phase: Phase, engine: dict) -> None:
        await asyncio.sleep(max(0.0, phase.t0 + self.args.seconds / 2 - time.monotonic()))
        assert self.server_root is not None
        pid = find_process(self.server_root, "EngineCore")
        if pid is None:
            engine["error"] = "no EngineCore process found under the server"
            self.log(engine["error"])
            return
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        if phase.down_since is None:
            phase.down_since = killed  # down from now on, until /ready says 503 then 200
        phase.kill_unseen = True
        engine.update(killed_pid=pid, kill_at_s=round(killed - phase.t0, 2))
        self.log(f"kill -9 of EngineCore (pid {pid}) at {killed - phase.t0:.1f} s")
        deadline = killed + self.args.restart_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            after = [(t + phase.t0 - killed, s) for t, s in phase.ready_log]
            after = [(t, s) for t, s in after if t > 0]
            down = next((i for i, (_, s) in enumerate(after) if s == 503), None)
            if down is None:
                continue
            engine["unready_after_s"] = round(after[down][0], 2)
            up = next((t for t, s in after[down:] if s == 200), None)
            if up is not None:
                engine["restart_s"] = round(up, 2)
                self.log(f"ready again {up:.1f} s after the kill")
                return
        engine["error"] = f"not ready again within {self.args.restart_timeout} s of the kill"
        self.log(engine["error"])

    async def run_phase(
        self, name: str, clients: int, seconds: float, disconnect_share: float, faults: bool
    ) -> tuple[Phase, dict]:
        now = time.monotonic()
        bound = seconds + (self.args.restart_timeout if faults else 0) + self.args.drain_timeout
        phase = Phase(now, seconds, self.args.max_requests, now + bound)
        engine: dict = {}
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(self.client_loop(i, phase, disconnect_share))
            for i in range(clients)
        ]
        side = [asyncio.ensure_future(self.ready_monitor(phase, stop))]
        if faults:
            side.append(asyncio.ensure_future(self.poison_loop(phase)))
            if self.args.kill_engine:
                side.append(asyncio.ensure_future(self.engine_killer(phase, engine)))
        self.log(f"{name}: {clients} clients for {seconds:g} s of serving time")
        _, pending = await asyncio.wait(
            tasks + side[1:], timeout=max(0.0, phase.hard_deadline - time.monotonic())
        )
        for task in pending:  # past the phase's bound: what is still open failed
            task.cancel()
        phase.loading()  # sets load_end if the bound cut the load
        stop.set()
        await asyncio.gather(*tasks, *side, return_exceptions=True)
        if pending:
            engine["cut_off_tasks"] = len(pending)
        return phase, engine

    async def check_scores(self) -> dict:
        """Send each sampled request alone; compare with the answer it got under load."""
        worst, mismatched = 0.0, []
        async with self.client() as c:
            for route, body, scores in self.sample:
                r = await c.post(route, json=body)
                if r.status_code != 200:
                    mismatched.append(f"{route}: solo request got {r.status_code}")
                    continue
                diff = max(
                    abs(a - b) for a, b in zip(scores, scores_of(route, r.json()), strict=True)
                )
                worst = max(worst, diff)
                if diff > self.args.score_tol:
                    mismatched.append(f"{route} with {len(scores)} documents: |diff| {diff:.2e}")
        return {"checked": len(self.sample), "max_abs_diff": worst, "mismatched": mismatched}

    async def metrics(self) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as c:
            return metric_values((await c.get("/metrics")).text)


def summarize_capacity(phase: Phase) -> dict:
    """Pairs/s over the closed loop: from its start to its last answer."""
    ok = [o for o in phase.outcomes if o.done and o.status == 200 and not o.error]
    wall = max((o.t_done for o in ok), default=phase.t0) - phase.t0
    pairs = sum(o.pairs for o in ok)
    lat = [1000 * (o.t_done - o.t_start) for o in ok]
    return {
        "requests": len(ok),
        "pairs": pairs,
        "seconds": round(wall, 2),
        "pairs_per_s": round(pairs / wall, 1) if wall > 0 else 0.0,
        "requests_per_s": round(len(ok) / wall, 2) if wall > 0 else 0.0,
        "p50_ms": round(pct(lat, 50), 1),
        "p95_ms": round(pct(lat, 95), 1),
        "errors": len(phase.outcomes) - len(ok),
        "retried_429": sum(o.retried_429 for o in phase.outcomes),
    }


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k: after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith(prefix) and after[k] - before.get(k, 0.0)
    }


def label(key: str, name: str) -> str:
    match = re.search(name + r'="([^"]*)"', key)
    return match.group(1) if match else ""


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def option_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def write_config(args: argparse.Namespace, folder: Path, port: int) -> Path:
    model = args.model
    if Path(model).exists():
        model = str(Path(model).resolve())
    options: dict[str, Any] = {"model_name": model, "max_model_len": args.max_model_len}
    if args.backend.startswith("qwen3_vllm") and not has_gpu():
        options["enforce_eager"] = True  # vLLM's CPU build: no compile step at start
    server: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "on_backend_failure": "restart",
        "max_backend_restarts": 1,
        "health_interval_s": 1.0,
    }
    for target, pairs in ((options, args.backend_option), (server, args.server_option)):
        for item in pairs:
            key, _, value = item.partition("=")
            target[key] = option_value(value)
    config = {
        "services": {
            "rerank": {
                "backend": args.backend,
                "server": server,
                "backends": {args.backend: options},
            }
        }
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return path


def start_service(args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    config = write_config(args, folder, port)
    env = dict(os.environ, RERANK_CONFIG=str(config), PYTHONUNBUFFERED="1")
    env.pop("RERANK_MODEL", None)
    env.pop("RERANK_BACKEND", None)
    if not has_gpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on vLLM's CPU build
    log_path = args.server_log or folder / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            "bash",
            str(ROOT / "scripts/start_reranker.sh"),
            "--backend",
            args.backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}", log_path


def wait_ready(url: str, seconds: float, proc: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def stop_service(proc: subprocess.Popen, seconds: float = 60.0) -> int | None:
    """SIGTERM (the script forwards it: the server drains and exits 0); after
    ``seconds``, SIGKILL of the processes it started."""
    if proc.poll() is None:
        tree = [proc.pid, *descendants(proc.pid)]
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(seconds)
        except subprocess.TimeoutExpired:
            for pid in reversed(tree):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(10)
            return None
    return proc.returncode


# ---------------------------------------------------------------- report


def report(result: dict) -> str:
    cap, f, mem = result["capacity"], result["faults"], result["memory"]
    inn, poi, dis, good, eng = (
        f["innocent"],
        f["poison"],
        f["disconnects"],
        f["goodput"],
        f["engine"],
    )
    chk = f["scores"]
    rows = [
        ("capacity", "clients, seconds", f"{cap['clients']}, {cap['seconds']}"),
        ("", "requests, pairs", f"{cap['requests']}, {cap['pairs']}"),
        ("", "pairs/s", f"{cap['pairs_per_s']}"),
        ("", "latency p50 / p95", f"{cap['p50_ms']:.0f} / {cap['p95_ms']:.0f} ms"),
        ("faults", "clients, serving seconds", f"{f['clients']}, {f['seconds']}"),
        ("", "phase wall time", f"{f['wall_seconds']} s ({f['downtime_seconds']} s engine down)"),
        (
            "",
            "innocent answered 200",
            f"{inn['answered']} of {inn['sent']} ({inn['retried_after_503']} retries after 503, "
            f"{inn['retried_after_429']} after 429; at most {inn['most_retries']} for one)",
        ),
        ("", "innocent failed", str(inn["failed"])),
        ("", "innocent latency p50 / p95", f"{inn['p50_ms']:.0f} / {inn['p95_ms']:.0f} ms"),
        (
            "",
            "scores vs. solo request",
            f"{chk['checked']} checked, max |diff| {chk['max_abs_diff']:.1e}, "
            f"{len(chk['mismatched'])} off",
        ),
        (
            "",
            "queue (documents)",
            f"max {f['queue']['max_documents']}, mean {f['queue']['mean_documents']}; "
            f"after the load: {f['queue']['idle_after']['documents']}",
        ),
        ("", "poison answered 4xx", f"{poi['rejected_4xx']} of {poi['sent']}"),
        (
            "",
            "disconnects",
            f"{dis['left']} left early ({dis['answered_first']} answered first); server: "
            f"{dis['server_499']} x 499, dropped unscored {dis['dropped_requests']} requests / "
            f"{dis['dropped_documents']} documents",
        ),
        (
            "",
            "goodput",
            f"{good['pairs_per_s']} pairs/s = {100 * good['share']:.0f}% of capacity "
            f"({100 * good['share_while_up']:.0f}% while the engine was up)",
        ),
    ]
    if eng.get("killed_pid"):
        rows.append(
            (
                "",
                "engine kill -9",
                f"at {eng['kill_at_s']} s; /ready 503 after {eng.get('unready_after_s', '-')} s; "
                f"ready again after {eng.get('restart_s', '-')} s",
            )
        )
    if mem.get("samples"):
        rows += [
            (
                "memory",
                "server tree RSS",
                f"min {mem['tree_min_mb']} MB, max {mem['tree_max_mb']} MB; after capacity "
                f"{mem['baseline_mb']} MB, growth {mem['growth_mb']:+} MB "
                f"(bound {mem['bound_mb']})",
            ),
            (
                "",
                "API process RSS",
                f"min {mem['api_min_mb']} MB, max {mem['api_max_mb']} MB; after capacity "
                f"{mem['api_baseline_mb']} MB, growth {mem['api_growth_mb']:+} MB",
            ),
        ]
    if "server_exit_status" in result:
        rows.append(("server", "exit status after SIGTERM", str(result["server_exit_status"])))
    rows.append(
        (
            "result",
            "",
            "PASS" if result["passed"] else "FAIL: " + "; ".join(result["failed_checks"]),
        )
    )
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows)


def summarize(
    args: argparse.Namespace,
    cap_phase: Phase,
    fault_phase: Phase,
    engine: dict,
    scores: dict,
    metrics_before: dict[str, float],
    metrics_after: dict[str, float],
    metrics_idle: dict[str, float],
    sampler: MemorySampler | None,
) -> dict:
    capacity = {"clients": args.capacity_clients, **summarize_capacity(cap_phase)}
    outcomes = fault_phase.outcomes
    innocent = [o for o in outcomes if o.kind == "innocent"]
    for o in outcomes:
        if not o.done:
            o.error = o.error or "no answer within the phase's time bound"
    ok = [o for o in innocent if o.done and o.status == 200 and not o.error]
    failed = [o for o in innocent if not o.done or o.status != 200 or o.error]
    poison = [o for o in outcomes if o.kind == "poison"]
    leaving = [o for o in outcomes if o.kind == "disconnect"]
    # Goodput: innocent pairs answered from the phase's start to its last innocent answer.
    load_end = fault_phase.load_end or time.monotonic()
    window = max((o.t_done for o in ok), default=fault_phase.t0) - fault_phase.t0
    down = fault_phase.downtime
    pairs = sum(o.pairs for o in ok)
    rate = pairs / window if window > 0 else 0.0
    up = window - down
    rate_up = pairs / up if up > 0 else 0.0
    cap_rate = capacity["pairs_per_s"] or math.nan
    dropped = delta(metrics_after, metrics_before, "reranker_dropped_")
    statuses = delta(metrics_after, metrics_before, "reranker_requests_total")
    by_status: dict[str, float] = {}
    for key, value in statuses.items():  # the scoring routes' answers
        if label(key, "route") in ROUTES:
            by_status[label(key, "status")] = by_status.get(label(key, "status"), 0) + value
    faults = {
        "clients": args.clients,
        "seconds": args.seconds,
        "wall_seconds": round(
            max((o.t_done for o in outcomes), default=load_end) - fault_phase.t0, 2
        ),
        "load_seconds": round(load_end - fault_phase.t0, 2),
        "downtime_seconds": round(down, 2),
        "innocent": {
            "sent": len(innocent),
            "answered": len(ok),
            "failed": len(failed),
            "failures": [
                {"status": o.status, "error": o.error, "route": o.route, "pairs": o.pairs}
                for o in failed[:50]
            ],
            "retried_after_503": sum(o.retried_503 for o in innocent),
            "retried_after_429": sum(o.retried_429 for o in innocent),
            "most_retries": max((o.retried_429 + o.retried_503 for o in innocent), default=0),
            "pairs_answered": sum(o.pairs for o in ok),
            "p50_ms": round(pct([1000 * (o.t_done - o.t_start) for o in ok], 50), 1),
            "p95_ms": round(pct([1000 * (o.t_done - o.t_start) for o in ok], 95), 1),
        },
        "scores": scores,
        "poison": {
            "sent": len(poison),
            "rejected_4xx": sum(1 for o in poison if o.status and 400 <= o.status < 500),
            "answers": [{"what": o.what, "route": o.route, "status": o.status} for o in poison],
        },
        "disconnects": {
            "sent": len(leaving),
            "left": sum(1 for o in leaving if o.left),
            "answered_first": sum(1 for o in leaving if o.status is not None),
            "errors": sum(1 for o in leaving if o.error),
            "server_499": int(by_status.get("499", 0)),
            "dropped_requests": int(
                sum(v for k, v in dropped.items() if k.startswith("reranker_dropped_requests"))
            ),
            "dropped_documents": int(
                sum(v for k, v in dropped.items() if k.startswith("reranker_dropped_documents"))
            ),
            "dropped_by_reason": {
                f"{k.split('{')[0].removeprefix('reranker_dropped_')}:{label(k, 'reason')}": int(v)
                for k, v in dropped.items()
            },
        },
        "server_statuses": {k: int(v) for k, v in sorted(by_status.items())},
        "queue": {
            "max_documents": int(max((q for _, q in fault_phase.queue_log), default=0)),
            "mean_documents": round(
                sum(q for _, q in fault_phase.queue_log) / max(1, len(fault_phase.queue_log))
            ),
            "idle_after": {
                k.removeprefix("reranker_queue_"): metrics_idle.get(k)
                for k in (
                    "reranker_queue_documents",
                    "reranker_queue_tokens",
                    "reranker_queue_chars",
                )
            },
        },
        "goodput": {
            "pairs_per_s": round(rate, 1),
            "share": round(rate / cap_rate, 3) if cap_rate == cap_rate else 0.0,
            "pairs_per_s_while_up": round(rate_up, 1),
            "share_while_up": round(rate_up / cap_rate, 3) if cap_rate == cap_rate else 0.0,
        },
        "engine": {
            **engine,
            "restarts_total": metrics_after.get("reranker_backend_restarts_total"),
        },
    }
    memory: dict[str, Any] = {"bound_mb": args.max_rss_growth_mb}
    if sampler is not None and sampler.samples:
        mb = 1024.0
        tree = [s[2] for s in sampler.samples]
        api = [s[3] for s in sampler.samples if s[3]]
        base = [s for s in sampler.samples if s[1] == "capacity"][-5:] or sampler.samples[:1]
        later = [s for s in sampler.samples if s[1] in ("faults", "check")] or sampler.samples
        baseline = sum(s[2] for s in base) / len(base)
        api_baseline = sum(s[3] for s in base) / len(base)
        memory.update(
            samples=len(tree),
            tree_min_mb=round(min(tree) / mb),
            tree_max_mb=round(max(tree) / mb),
            baseline_mb=round(baseline / mb),
            peak_mb=round(max(s[2] for s in later) / mb),
            final_mb=round(tree[-1] / mb),
            growth_mb=round((max(s[2] for s in later) - baseline) / mb),
            api_min_mb=round(min(api) / mb) if api else 0,
            api_max_mb=round(max(api) / mb) if api else 0,
            api_baseline_mb=round(api_baseline / mb),
            api_growth_mb=round((max(s[3] for s in later) - api_baseline) / mb),
            series=[  # [seconds, phase, tree MB, API process MB]
                [round(t - sampler.samples[0][0], 1), phase_, round(k / mb), round(a / mb)]
                for t, phase_, k, a in sampler.samples[:: max(1, len(sampler.samples) // 200)]
            ],
        )
    checks = {
        "no innocent request failed": not failed,
        "sampled scores match the request sent alone": not scores["mismatched"],
        "every poison request got 4xx": faults["poison"]["rejected_4xx"] == args.poison,
    }
    checks["the queue is empty once the load stops"] = not any(
        faults["queue"]["idle_after"].values()
    )
    if args.kill_engine:
        checks["the engine was killed and came back"] = "restart_s" in engine
    if memory.get("samples"):
        checks[f"RSS grew at most {args.max_rss_growth_mb} MB"] = (
            memory["growth_mb"] <= args.max_rss_growth_mb
        )
    if args.min_goodput_share:
        checks[f"goodput while up at least {args.min_goodput_share:.0%} of capacity"] = (
            faults["goodput"]["share_while_up"] >= args.min_goodput_share
        )
    return {
        "capacity": capacity,
        "faults": faults,
        "memory": memory,
        "checks": checks,
        "failed_checks": [k for k, v in checks.items() if not v],
        "passed": all(checks.values()),
    }


async def run_test(args: argparse.Namespace, url: str, root: int | None) -> dict:
    test = FaultTest(args, url, root)
    sampler = MemorySampler(root) if root is not None else None
    if sampler is not None:
        sampler.sample()
        sampler.start()
    try:
        async with test.client() as c:
            warm = await c.post("/rerank", json={"query": "warm-up", "documents": ["a", "b"]})
            if warm.status_code != 200:
                raise RuntimeError(f"warm-up request got {warm.status_code}: {warm.text[:300]}")
        if sampler is not None:
            sampler.phase = "capacity"
        cap_phase, _ = await test.run_phase(
            "capacity", args.capacity_clients, args.capacity_seconds, 0.0, faults=False
        )
        before = await test.metrics()
        if sampler is not None:
            sampler.phase = "faults"
        fault_phase, engine = await test.run_phase(
            "faults", args.clients, args.seconds, args.disconnect_share, faults=True
        )
        if sampler is not None:
            sampler.phase = "check"
        if not await asyncio.to_thread(wait_ready, url, args.restart_timeout, None):
            raise RuntimeError("the service is not ready after the fault phase")
        await asyncio.sleep(1.0)  # the server notices the last disconnects
        after = await test.metrics()
        test.log(f"checking {len(test.sample)} answers against the same request sent alone")
        scores = await test.check_scores()
        idle = await test.metrics()  # nothing is sent now: the queue must be empty
    finally:
        if sampler is not None:
            sampler.stopped.set()
            sampler.join(5)
            sampler.sample()
    return summarize(args, cap_phase, fault_phase, engine, scores, before, after, idle, sampler)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    ap.add_argument("--url", help="a running service on 127.0.0.1 (else one is started)")
    ap.add_argument("--server-pid", type=int, help="with --url: its process, for RSS and the kill")
    ap.add_argument("--api-key", help="with --url: the service's api_key")
    ap.add_argument("--model", help="hub id or folder of the model to serve (without --url)")
    ap.add_argument("--backend", default="qwen3_vllm")
    ap.add_argument(
        "--max-model-len", type=int, default=512, help="the test's documents fit in 512 tokens"
    )
    ap.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another option of the backend (value read as JSON), e.g. dtype=bfloat16",
    )
    ap.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another services.rerank.server option, e.g. request_timeout_s=60",
    )
    ap.add_argument("--capacity-clients", type=int, default=16)
    ap.add_argument("--capacity-seconds", type=float, help="default: --seconds")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="serving time under load of the fault phase"
    )
    ap.add_argument("--max-requests", type=int, default=100_000, help="per phase")
    ap.add_argument(
        "--large-docs",
        type=int,
        default=200,
        help="documents of the largest requests (5%% of them)",
    )
    ap.add_argument(
        "--disconnect-share",
        type=float,
        default=0.2,
        help="share of fault-phase requests abandoned early",
    )
    ap.add_argument(
        "--disconnect-after",
        type=float,
        default=2.0,
        help="abandoned requests leave after 0.05 s to this many seconds",
    )
    ap.add_argument("--poison", type=int, default=9, help="poison requests in the fault phase")
    ap.add_argument(
        "--kill-engine",
        choices=("auto", "yes", "no"),
        default="auto",
        help="kill -9 the EngineCore halfway (auto: on vLLM backends)",
    )
    ap.add_argument("--max-retries", type=int, default=40, help="per request, on 429 / 503")
    ap.add_argument("--max-retry-wait", type=float, default=30.0, help="cap on Retry-After")
    ap.add_argument("--request-timeout", type=float, default=300.0, help="client timeout")
    ap.add_argument(
        "--restart-timeout",
        type=float,
        default=300.0,
        help="how long the engine may take to come back",
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=240.0,
        help="after the load stops, how long open requests may take",
    )
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument(
        "--check-sample",
        type=int,
        default=24,
        help="answers checked against the request sent alone",
    )
    ap.add_argument("--score-tol", type=float, default=1e-4)
    ap.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=1024.0,
        help="bound on the server tree's RSS growth over its level after phase a",
    )
    ap.add_argument(
        "--min-goodput-share",
        type=float,
        default=0.5,
        help="fail when goodput while the engine is up (innocent pairs/s of phase b, its "
        "downtime left out) is below this share of phase a's pairs/s (0: not checked)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--server-log", type=Path, help="keep the started server's output here")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if not args.url and not args.model:
        ap.error("give --model (a service is started) or --url")
    if args.url and not re.match(
        r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/?$", args.url
    ):
        ap.error("the fault test only targets loopback addresses (http://127.0.0.1:PORT)")
    args.url = args.url.rstrip("/") if args.url else None
    args.capacity_seconds = args.capacity_seconds or args.seconds
    can_kill = args.server_pid is not None or not args.url
    if args.kill_engine == "auto":
        args.kill_engine = args.backend.startswith("qwen3_vllm") and can_kill
    else:
        args.kill_engine = args.kill_engine == "yes"
    if args.kill_engine and not can_kill:
        ap.error("--kill-engine yes with --url needs --server-pid")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    proc = None
    root = args.server_pid
    url = args.url
    code = 0
    with tempfile.TemporaryDirectory(prefix="fault_test-") as tmp:
        log_path = None
        try:
            if url is None:
                proc, url, log_path = start_service(args, Path(tmp))
                root = proc.pid
                print(
                    f"[fault_test] starting {args.backend} on {url} (log {log_path})",
                    file=sys.stderr,
                    flush=True,
                )
                t = time.monotonic()
                if not wait_ready(url, args.start_timeout, proc):
                    print(
                        "error: the service did not become ready:\n" + log_path.read_text()[-4000:],
                        file=sys.stderr,
                    )
                    return 2
                if not args.quiet:
                    print(
                        f"[fault_test] ready after {time.monotonic() - t:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            elif not wait_ready(url, 10, None):
                print(f"error: {url}/ready does not answer 200", file=sys.stderr)
                return 2
            try:
                result = asyncio.run(run_test(args, url, root))
            except (RuntimeError, httpx.HTTPError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                if log_path is not None:
                    print(log_path.read_text()[-4000:], file=sys.stderr)
                return 2
        finally:
            if proc is not None:
                exit_status = stop_service(proc)
        if proc is not None:
            result["server_exit_status"] = exit_status
            result["checks"]["SIGTERM stopped the server with status 0"] = exit_status == 0
            result["failed_checks"] = [k for k, v in result["checks"].items() if not v]
            result["passed"] = not result["failed_checks"]
        result["setup"] = {
            "backend": args.backend,
            "model": args.model,
            "url": args.url or "started by the test",
            "argv": sys.argv[1:] if argv is None else argv,
        }
        print(report(result))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        if not result["passed"]:
            code = 1
            if log_path is not None and log_path.exists():
                lines = log_path.read_text().splitlines()
                errors = [line for line in lines if "ERROR" in line or "error" in line][-20:]
                print("\n".join(["server log (errors):", *errors]), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
