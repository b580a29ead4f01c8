"""Throughput benchmark of one backend on the synthetic workload (``reranker bench``)."""

from __future__ import annotations

import json
import platform
import time
from typing import Any

from reranker.protocol import RerankBackend
from reranker.workload import Workload


def gpu_info() -> dict[str, Any]:
    """Name of the GPU and peak memory allocated by this process (torch), if any."""
    try:
        import torch

        if torch.cuda.is_available():
            return {
                "device": torch.cuda.get_device_name(0),
                "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
    except Exception:
        pass
    return {"device": f"cpu ({platform.processor() or platform.machine()})"}


def run_bench(
    backend: RerankBackend, workload: Workload, repeat: int = 3, warmup: int = 1
) -> dict[str, Any]:
    """Score every query's documents ``repeat`` times; report the best and mean pairs/s."""
    for _ in range(warmup):
        backend.score_with_meta(workload.queries[0], workload.docs[0][:8])
    runs = []
    tokens = 0
    for _ in range(repeat):
        start = time.perf_counter()
        tokens = 0
        for query, docs in zip(workload.queries, workload.docs, strict=True):
            _, meta = backend.score_with_meta(query, docs)
            tokens += meta["scored_tokens"]
        runs.append(time.perf_counter() - start)
    best = min(runs)
    return {
        "backend": backend.name,
        "model": backend.model_name,
        "pairs": workload.pairs,
        "tokens": tokens,
        "mean_tokens_per_pair": round(tokens / workload.pairs, 1),
        "best_s": round(best, 4),
        "pairs_per_s": round(workload.pairs / best, 1),
        "tokens_per_s": round(tokens / best, 1),
        "mean_pairs_per_s": round(workload.pairs * len(runs) / sum(runs), 1),
        **gpu_info(),
    }


def format_result(result: dict[str, Any]) -> str:
    """One human line plus the JSON record."""
    line = (
        f"{result['backend']}: {result['pairs_per_s']} pairs/s, {result['tokens_per_s']} "
        f"tokens/s ({result['pairs']} pairs, {result['mean_tokens_per_pair']} tokens/pair, "
        f"best of runs {result['best_s']} s) on {result['device']}"
    )
    return line + "\n" + json.dumps(result)
