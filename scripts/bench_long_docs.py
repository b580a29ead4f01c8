#!/usr/bin/env python3
"""Long documents: ``long_documents: chunk`` against raising ``max_model_len`` to fit them.

    python scripts/bench_long_docs.py --model DIR [--backend qwen3_transformers]
        [--requests 12] [--docs 8] [--min-tokens 8000] [--max-tokens 32000]
        [--chunk-tokens 512] [--json-out FILE]

Each mode runs in a process of its own (its own peak memory) on the same requests, one
request at a time (a query and ``--docs`` documents of 8k-32k tokens, log-uniform):

- ``chunk``: the default ``max_model_len`` (4,096), documents scored in chunks of
  ``--chunk-tokens`` (overlap an eighth), aggregated by max, enough chunks a document to
  cover the longest;
- ``whole``: ``max_model_len`` raised to fit the longest document whole (truncate, which
  then cuts nothing).

Prints per mode: documents/s, tokens/s, p50 / p99 request latency, startup, peak torch
memory (GPU) and the card's memory in use, then one JSON line per mode (also appended to
``--json-out``). Build a model of the real shape with
``reranker build-test-model DIR --shape 0.6b --dtype bfloat16``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS_PER_TOKEN = 1.0  # the workload's common English words are about a token each


def make_requests(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """``--requests`` (query, documents) pairs, the same for every mode."""
    import random

    from reranker.bench.workload import make_workload

    rng = random.Random(args.seed)
    lo, hi = math.log(args.min_tokens), math.log(args.max_tokens)
    requests = []
    for r in range(args.requests):
        query = make_workload(1, 1, seed=args.seed * 1000 + r).queries[0]
        docs = []
        for d in range(args.docs):
            words = int(math.exp(rng.uniform(lo, hi)) * WORDS_PER_TOKEN)
            seed = (args.seed * 1000 + r) * 1000 + d
            docs.append(make_workload(1, 1, words, words, seed=seed).docs[0][0])
        requests.append((query, docs))
    return requests


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Load the backend for ``args.one`` and time every request (after one warm-up)."""
    from reranker.bench.runner import gpu_info
    from reranker.core.chunking import ChunkingRequest
    from reranker.core.registry import load_backend

    requests = make_requests(args)
    options: dict[str, Any] = {"model_name": args.model}
    chunking = None
    if args.one == "whole":
        options["max_model_len"] = args.max_tokens + 1024  # the prompt around the document
    else:
        stride = args.chunk_tokens - args.chunk_tokens // 8
        chunking = ChunkingRequest(
            long_documents="chunk",
            chunk_tokens=args.chunk_tokens,
            max_chunks_per_doc=math.ceil(args.max_tokens * 1.2 / stride) + 1,
        )
    start = time.perf_counter()
    backend = load_backend(args.backend, options)
    startup = time.perf_counter() - start
    query, docs = requests[0]
    backend.score_with_meta(query, docs[:2], chunking=chunking)  # warm-up
    latencies, tokens, scored, truncated = [], 0, 0, 0
    for query, docs in requests:
        t0 = time.perf_counter()
        _, meta = backend.score_with_meta(query, docs, chunking=chunking)
        latencies.append(time.perf_counter() - t0)
        tokens += meta["scored_tokens"]
        scored += meta.get("scored_chunks") or meta["unique_docs"]
        truncated += meta["truncated_docs"]
    total = sum(latencies)
    ordered = sorted(latencies)
    result = {
        "mode": args.one,
        "backend": args.backend,
        "max_model_len": backend.options.max_model_len,
        "chunk_tokens": args.chunk_tokens if chunking else None,
        "requests": len(requests),
        "docs": sum(len(d) for _, d in requests),
        "prompts": scored,
        "truncated_prompts": truncated,
        "tokens": tokens,
        "docs_per_s": round(sum(len(d) for _, d in requests) / total, 2),
        "tokens_per_s": round(tokens / total, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(
            ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000, 1
        ),
        "startup_s": round(startup, 1),
        **gpu_info(),
    }
    backend.close()
    return result


def main() -> None:
    """Run each mode in its own process and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--backend", default="qwen3_transformers")
    ap.add_argument("--modes", default="chunk,whole", help="chunk,whole")
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--docs", type=int, default=8, help="documents per request")
    ap.add_argument("--min-tokens", type=int, default=8000)
    ap.add_argument("--max-tokens", type=int, default=32000)
    ap.add_argument("--chunk-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", help="append one JSON line per mode")
    ap.add_argument("--one", choices=["chunk", "whole"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_mode(args)))
        return
    results = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", mode]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(f"{mode}: failed (exit {out.returncode})\n{out.stderr[-3000:]}", file=sys.stderr)
            sys.exit(1)
        results.append(json.loads(lines[-1]))
    head = (
        "| mode | max_model_len | prompts | docs/s | tokens/s | p50 ms | p99 ms | peak torch GiB |"
    )
    print(head + "\n|" + " --- |" * 8)
    for r in results:
        print(
            f"| {r['mode']} | {r['max_model_len']} | {r['prompts']} | {r['docs_per_s']} | "
            f"{r['tokens_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r.get('peak_torch_mem_gib', '-')} |"
        )
    for r in results:
        print(json.dumps(r))
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
