#!/usr/bin/env python3
"""Fidelity of ``quantization: fp8``: the same workload scored without and with fp8.

    python scripts/bench_fp8_fidelity.py --model DIR [--backend qwen3_transformers]
        [--queries 8] [--docs 100] [--min-words 40] [--max-words 700] [--seed 0]
        [--option KEY=VALUE ...] [--json-out FILE]

Loads the backend twice, one after the other in this process (``quantization: none``,
the model's dtype: bfloat16 on a GPU, float32 on a CPU; then ``quantization: fp8``), on
the synthetic workload of ``reranker bench`` (``reranker.bench.workload``), and compares
each query's normalised scores P = sigmoid(logit): Spearman of the two rankings (mean and
least over the queries), top-10 overlap, and the largest and mean |ΔP| over all pairs.
Prints a table and one JSON line (also appended to ``--json-out``). Exit status 0 when
both loaded and scored; the numbers are for reading, not thresholds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# fp8 first: a setting it cannot run on is reported before the unquantised run
MODES = ("fp8", "none")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub id or local model directory")
    p.add_argument("--backend", default="qwen3_transformers", help="backend name")
    p.add_argument("--queries", type=int, default=8, help="queries in the workload (8)")
    p.add_argument("--docs", type=int, default=100, help="documents per query (100)")
    p.add_argument("--min-words", type=int, default=40, help="shortest document (40)")
    p.add_argument("--max-words", type=int, default=700, help="longest document (700)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    p.add_argument(
        "--option", "-o", action="append", default=[], help="backend option KEY=VALUE (both runs)"
    )
    p.add_argument("--json-out", help="append the JSON record to this file")
    return p.parse_args(argv)


def backend_options(args: argparse.Namespace, quantization: str) -> dict[str, Any]:
    """The options of one run: ``--option`` values, the model, the quantization."""
    options: dict[str, Any] = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "[{" else value
    return {**options, "model_name": args.model, "quantization": quantization}


def score_workload(
    backend_name: str, options: dict[str, Any], queries: list[str], docs: list[list[str]]
) -> tuple[list[list[float]], dict[str, Any]]:
    """Each query's P scores from a backend loaded with ``options``, and what it ran on."""
    from reranker.core.registry import load_backend

    started = time.perf_counter()
    with load_backend(backend_name, options) as backend:
        loaded_s = time.perf_counter() - started
        started = time.perf_counter()
        scores = [list(backend.score(q, d)) for q, d in zip(queries, docs, strict=True)]
        info = {k: v for k, v in backend.meta_extra().items() if k in ("device", "dtype")}
    info.update(load_s=round(loaded_s, 2), score_s=round(time.perf_counter() - started, 2))
    return scores, info


def fidelity(base: list[list[float]], quantized: list[list[float]]) -> dict[str, float]:
    """Per-query agreement of two score lists, summarised over the queries."""
    from reranker.compare.metrics import agreement

    per_query = [agreement(a, b) for a, b in zip(base, quantized, strict=True)]
    pairs = zip(base, quantized, strict=True)
    diffs = [abs(x - y) for a, b in pairs for x, y in zip(a, b, strict=True)]
    spearman = [q["spearman"] for q in per_query]
    return {
        "spearman_mean": statistics.fmean(spearman),
        "spearman_min": min(spearman),
        "top10_overlap_mean": statistics.fmean(q["top10_overlap"] for q in per_query),
        "max_abs_dp": max(diffs),
        "mean_abs_dp": statistics.fmean(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    """Score the workload both ways, print the comparison and the JSON record."""
    from reranker.bench.workload import make_workload
    from reranker.core.errors import RerankerError

    args = parse_args(argv)
    workload = make_workload(args.queries, args.docs, args.min_words, args.max_words, args.seed)
    runs = {}
    for mode in MODES:
        try:
            runs[mode] = score_workload(
                args.backend, backend_options(args, mode), workload.queries, workload.docs
            )
        except RerankerError as exc:  # a setting or device that cannot run: one line
            print(f"error: quantization {mode}: {exc}", file=sys.stderr)
            return 2
    summary = fidelity(runs["none"][0], runs["fp8"][0])
    record = {
        "bench": "fp8_fidelity",
        "backend": args.backend,
        "model": args.model,
        "workload": workload.shape,
        "pairs": workload.pairs,
        "runs": {mode: info for mode, (_, info) in runs.items()},
        **summary,
    }
    base = runs["none"][1]
    print(f"{args.backend} on {base.get('device')}: {workload.pairs} pairs, fp8 against "
          f"quantization none ({base.get('dtype')})")  # fmt: skip
    print("| Spearman mean | Spearman min | top-10 overlap | max abs dP | mean abs dP |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {summary['spearman_mean']:.4f} | {summary['spearman_min']:.4f} | "
        f"{summary['top10_overlap_mean']:.3f} | {summary['max_abs_dp']:.4f} | "
        f"{summary['mean_abs_dp']:.4f} |"
    )
    line = json.dumps(record)
    print(line)
    if args.json_out:
        with open(args.json_out, "a") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
