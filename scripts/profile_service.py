"""Where the service's time goes: one backend, scored in-process and over HTTP.

    python scripts/profile_service.py --model DIR [--backend qwen3_transformers]
        [--levels 1x10,1x100,1x1000,16x100,64x10] [--requests 8] [-o KEY=VALUE ...]
        [--server-option KEY=VALUE ...] [--samples FILE] [--json-out FILE]

Loads the backend once (the config's defaults, `max_model_len` 4096, and each `-o`),
then:

1. in-process: for each document count of the levels, --requests calls of
   `score_requests` with one request each, one after the other: p50 latency and pairs/s;
2. over HTTP: the same backend behind the service (`create_app`, the server
   `reranker serve` runs, on 127.0.0.1, in this process), each level (clients x
   documents, requests fixed by the seed as in scripts/bench_http.py) driven by a client
   in a process of its own: pairs/s, p50, p99, and how much of the wall time the backend
   spent in its calls (`busy`), the calls it made and their documents;
3. a sampling profiler over each level: every 4 ms the innermost frames of each service
   thread (the scheduler, the event loop, the tokenizer threads), written to --samples
   (default: printed) as the most frequent stacks per thread.

Reading it: busy near 100% with pairs/s below the in-process rate means the calls
themselves are slower (smaller, or waiting on the host: the scheduler thread sampled
waiting for the tokenizer rather than in the final `tolist`); busy well below 100% means
time goes to HTTP, JSON or the queue. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reranker.bench.http_load import (  # noqa: E402
    Requests,
    free_port,
    key_values,
    level_list,
)

CLIENT = """
import json, sys
from reranker.bench.http_load import drive, summarize_level
url, clients, docs, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
bodies = json.loads(open(path).read())
outcomes, wall, unsent = drive(url, bodies, clients, 600, 600)
print(json.dumps(summarize_level(clients, docs, outcomes, wall, unsent)))
"""


class Sampler:
    """Counts the innermost frames of every other thread of this process, every
    ``interval`` seconds, while it is entered."""

    def __init__(self, interval: float = 0.004, depth: int = 4) -> None:
        self.interval = interval
        self.depth = depth
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="profile-sampler", daemon=True)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack = traceback.extract_stack(frame)[-self.depth :]
                where = " < ".join(
                    f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(stack)
                )
                self.counts[names.get(ident, str(ident))][where] += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, title: str, prefixes: tuple[str, ...], top: int = 8) -> str:
        """The ``top`` stacks of each thread whose name starts with one of ``prefixes``."""
        lines = [f"==== {title}"]
        for name, counts in sorted(self.counts.items()):
            if not name.startswith(prefixes):
                continue
            total = sum(counts.values())
            lines.append(f"  -- thread {name}: {total} samples")
            lines += [
                f"     {100 * n / total:5.1f}% {where}" for where, n in counts.most_common(top)
            ]
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model id or folder")
    p.add_argument("--backend", default="qwen3_transformers")
    p.add_argument("--levels", default="1x10,1x100,1x1000,16x100,64x10", help="CxD,...")
    p.add_argument(
        "--requests",
        type=int,
        default=8,
        help="in-process calls and requests a level (at least 4 x clients over HTTP)",
    )
    p.add_argument("-o", "--option", action="append", default=[], help="backend option KEY=VALUE")
    p.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="services.rerank.server setting (e.g. overlap_calls=false)",
    )
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-words", type=int, default=100)
    p.add_argument("--max-words", type=int, default=1250)
    p.add_argument("--samples", help="write the sampled stacks here (default: print them)")
    p.add_argument("--json-out", help="append one JSON line per measurement")
    args = p.parse_args(argv)
    try:
        args.level_list = level_list(args.levels)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if not args.level_list:
        p.error("--levels: at least one level")
    if args.requests < 1:
        p.error("--requests must be at least 1")
    return args


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn

    from reranker.config import ServerSettings
    from reranker.core.protocol import ScoreRequest
    from reranker.core.registry import load_backend
    from reranker.service.app import create_app
    from reranker.service.server import uvicorn_config

    options = {"model_name": args.model, "max_model_len": args.max_model_len}
    options.update(key_values(args.option))
    started = time.perf_counter()
    backend = load_backend(args.backend, options)
    print(f"loaded {args.backend} in {time.perf_counter() - started:.1f} s", flush=True)
    meta_extra = getattr(backend, "meta_extra", None)
    extra = meta_extra() if callable(meta_extra) else {}
    most_docs = max(docs for _, docs in args.level_list)
    total = sum(max(args.requests, 4 * c) for c, _ in args.level_list) + 8 * args.requests
    requests = Requests(args.seed, most_docs, total, args.min_words, args.max_words)
    records: list[dict[str, Any]] = []
    samples: list[str] = []

    for docs in sorted({docs for _, docs in args.level_list}):
        bodies = requests.take(args.requests + 1, docs)
        calls = [ScoreRequest(b["query"], b["documents"], True, None) for b in bodies]
        backend.score_requests(calls[:1])  # this size's first call
        seconds = []
        for call in calls[1:]:
            t = time.perf_counter()
            backend.score_requests([call])
            seconds.append(time.perf_counter() - t)
        p50 = median(seconds)
        record = {"mode": "in-process", "docs": docs, "p50_ms": round(1000 * p50, 1),
                  "pairs_per_s": round(docs / p50, 1)}  # fmt: skip
        records.append(record)
        print(
            f"in-process {docs} docs: p50 {record['p50_ms']} ms, {record['pairs_per_s']} pairs/s",
            flush=True,
        )

    busy = {"seconds": 0.0, "calls": 0, "docs": 0, "last_end": 0.0}
    start_requests = backend.start_requests

    def timed_start(batch: list[Any]) -> Any:
        # a call is busy from its start, or from the previous call's end where calls
        # overlap (the service starts the next one while the device runs this one)
        t = time.perf_counter()
        collect = start_requests(batch)

        def timed_collect() -> Any:
            try:
                return collect()
            finally:
                end = time.perf_counter()
                busy["seconds"] += end - max(t, busy["last_end"])
                busy["last_end"] = end
                busy["calls"] += 1
                busy["docs"] += sum(len(r.docs) for r in batch)

        return timed_collect

    # score_requests goes through start_requests too: both paths are timed here
    backend.start_requests = timed_start  # type: ignore[method-assign]
    settings = ServerSettings(
        max_docs_per_request=most_docs, max_request_bytes=1 << 30, max_queue_docs=1 << 24,
        max_queue_tokens=1 << 34, max_queue_chars=1 << 40, request_timeout_s=600,
        **key_values(args.server_option),
    )  # fmt: skip
    app = create_app(lambda: backend, settings, backend_name=args.backend, model=args.model)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", port, log_level="warning"))
    threading.Thread(target=server.run, name="service-http", daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        print("error: the service did not become ready", file=sys.stderr)
        return 1
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    failed = False
    try:
        for clients, docs in args.level_list:
            bodies = requests.take(max(args.requests, 4 * clients), docs)
            httpx.post(f"{url}/rerank", json=bodies[0], timeout=600)  # this size's first call
            path = Path(tempfile.gettempdir()) / f"profile-service-{os.getpid()}.json"
            path.write_text(json.dumps(bodies))
            before = dict(busy)
            with Sampler() as sampler:
                run = subprocess.run(
                    [sys.executable, "-c", CLIENT, url, str(clients), str(docs), str(path)],
                    capture_output=True, text=True, env=env, timeout=1200,
                )  # fmt: skip
            path.unlink(missing_ok=True)
            if run.returncode != 0:
                print(f"error: the client failed: {run.stderr[-2000:]}", file=sys.stderr)
                failed = True
                continue
            level = json.loads(run.stdout.strip().splitlines()[-1])
            wall = level["wall_s"] or 1e-9
            calls = busy["calls"] - before["calls"]
            docs_scored = busy["docs"] - before["docs"]
            level.update(
                mode="http",
                overlap_calls=settings.overlap_calls and backend.overlaps_calls,
                busy_share=round((busy["seconds"] - before["seconds"]) / wall, 3),
                backend_calls=calls,
                backend_docs=docs_scored,
                docs_per_call=round(docs_scored / max(calls, 1), 1),
            )
            records.append(level)
            failed |= level["failed"] > 0
            print(
                f"http {clients}x{docs}: {level['pairs_per_s']} pairs/s, p50 {level['p50_ms']} "
                f"ms, p99 {level['p99_ms']} ms, backend busy {100 * level['busy_share']:.0f}% "
                f"of {wall:.2f} s, {calls} calls of {level['docs_per_call']} docs",
                flush=True,
            )
            samples.append(
                sampler.report(f"{clients}x{docs}", ("rerank", "reranker", "service-http"))
            )
    finally:
        server.should_exit = True
    text = "\n".join(samples)
    if args.samples:
        Path(args.samples).write_text(text + "\n")
    else:
        print(text)
    if args.json_out:
        with open(args.json_out, "a") as out:
            for record in records:
                out.write(json.dumps({"backend": args.backend, **extra, **record}) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
