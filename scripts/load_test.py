"""Load test of the HTTP service on loopback: throughput and latency against concurrency.

    python scripts/load_test.py --model DIR [--backend qwen3_transformers] [--docs 20]
        [--concurrency 1,4,16,32] [--requests 64] [--max-seconds 60]
    python scripts/load_test.py --url http://127.0.0.1:8000 ...   # a running service

Without --url it starts the service itself on 127.0.0.1 (random port) in this process.
Every level sends a bounded number of requests and stops early after --max-seconds.
It also times the same requests against the backend called directly, so the service's
overhead (HTTP, JSON, queueing) shows next to the model's own time. Traffic goes only
to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reranker.bench.workload import make_workload  # noqa: E402


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def start_service(backend_name: str, model: str) -> tuple[str, object, object]:
    """Start the app with uvicorn in a thread; return (url, backend, server)."""
    import uvicorn

    from reranker.config import ServerSettings
    from reranker.core.registry import load_backend
    from reranker.service.app import create_app

    holder: dict = {}

    def load():
        holder["b"] = load_backend(backend_name, {"model_name": model})
        return holder["b"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(load, ServerSettings(max_queue_docs=100_000), backend_name, model)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return url, holder["b"], server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("service did not become ready")


def main() -> None:
    """Run the levels and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--model")
    ap.add_argument("--backend", default="qwen3_transformers")
    ap.add_argument("--docs", type=int, default=20, help="documents per request")
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (bound)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time bound per level")
    args = ap.parse_args()
    if not args.url and not args.model:
        ap.error("give --url or --model")
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        ap.error("load tests only target loopback addresses")

    backend = server = None
    url = args.url
    if not url:
        url, backend, server = start_service(args.backend, args.model)
    wl = make_workload(
        queries=args.requests, docs_per_query=args.docs, min_words=20, max_words=200, seed=1
    )
    bodies = [{"query": q, "docs": d} for q, d in zip(wl.queries, wl.docs, strict=True)]

    rows = [
        "| concurrency | requests | req/s | docs/s | p50 ms | p95 ms | p99 ms | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    p50_at_1 = None
    with httpx.Client(timeout=300) as client:
        client.post(f"{url}/v1/score_with_meta", json=bodies[0])  # warm-up
        for level in [int(x) for x in args.concurrency.split(",")]:
            latencies: list[float] = []
            errors = 0
            deadline = time.perf_counter() + args.max_seconds

            def one(body: dict, deadline: float = deadline) -> tuple[float, int]:
                if time.perf_counter() > deadline:
                    return 0.0, -1
                t = time.perf_counter()
                r = client.post(f"{url}/v1/score_with_meta", json=body)
                return time.perf_counter() - t, r.status_code

            start = time.perf_counter()
            with cf.ThreadPoolExecutor(level) as pool:
                for seconds, status in pool.map(one, bodies):
                    if status == 200:
                        latencies.append(seconds)
                    elif status != -1:
                        errors += 1
            wall = time.perf_counter() - start
            n = len(latencies)
            if level == 1 and n:
                p50_at_1 = pct(latencies, 50)
            rows.append(
                f"| {level} | {n} | {n / wall:.1f} | {n * args.docs / wall:.0f} | "
                f"{1000 * pct(latencies, 50):.1f} | {1000 * pct(latencies, 95):.1f} | "
                f"{1000 * pct(latencies, 99):.1f} | {errors} |"
            )
    print("\n".join(rows))
    if backend is not None:
        direct = []
        for body in bodies[: min(len(bodies), 32)]:
            t = time.perf_counter()
            backend.score_with_meta(body["query"], body["docs"])
            direct.append(time.perf_counter() - t)
        d50 = pct(direct, 50)
        print(
            f"\ndirect backend call p50: {1000 * d50:.1f} ms; service at concurrency 1 p50: "
            f"{1000 * (p50_at_1 or 0):.1f} ms; overhead {1000 * ((p50_at_1 or 0) - d50):.1f} ms "
            f"per request ({args.docs} docs)"
        )
    if server is not None:
        server.should_exit = True


if __name__ == "__main__":
    main()
