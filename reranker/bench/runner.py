"""Throughput benchmark of one backend on the synthetic workload (``reranker bench``)."""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Any

from reranker.bench.workload import Workload
from reranker.core.protocol import RerankBackend


def gpu_info() -> dict[str, Any]:
    """GPU name, this process's peak torch allocation, and the card's memory in use.

    The vLLM engine runs in a child process, so the card-wide figure (NVML) is the one
    that covers every backend.
    """
    info: dict[str, Any] = {"device": f"cpu ({platform.processor() or platform.machine()})"}
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["peak_torch_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except Exception:
        return info
    try:
        import pynvml

        pynvml.nvmlInit()
        mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        info["gpu_mem_used_gib"] = round(mem.used / 2**30, 2)
    except Exception:
        pass
    return info


def peak_host_mem_gib() -> float | None:
    """This process's peak resident memory so far (GiB): the model's host copy, the
    tokenizer, the workload; ``None`` where the platform does not say."""
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 2)  # bytes / KiB


def fresh_workloads(workload: Workload, repeat: int, first: int = 0) -> list[Workload]:
    """Workloads number ``first`` .. ``first + repeat - 1`` of ``workload`` 's shape, each
    with texts of its own (number 0 is ``workload`` itself).

    Repeating identical prompts would let vLLM's prefix cache skip nearly all the work
    after the first run; fresh documents leave only a real prefix (instruction + query
    tokens) to share, as with live traffic. Each timed phase of a bench takes its own
    numbers, so no phase replays documents that an earlier one left in a cache.
    """
    from reranker.bench.workload import make_workload

    shape = workload.shape
    return [
        workload if r == 0 else make_workload(**{**shape, "seed": shape["seed"] + 1000 * r})
        for r in range(first, first + repeat)
    ]


def run_bench(
    backend: RerankBackend,
    workload: Workload,
    repeat: int = 3,
    warmup: int = 1,
    coalesce: bool = False,
    first: int = 0,
) -> dict[str, Any]:
    """Score every query's documents ``repeat`` times (fresh texts each time: workloads
    ``first`` onwards of :func:`fresh_workloads`); report the best and mean pairs/s.
    ``coalesce`` sends all queries in one ``score_requests`` call, as the HTTP scheduler
    does with concurrent requests; otherwise one call per query."""
    from reranker.core.protocol import ScoreRequest

    for _ in range(warmup):
        backend.score_with_meta(workload.queries[0], workload.docs[0][:8])
    runs = []
    tokens = 0
    for run in fresh_workloads(workload, repeat, first):
        start = time.perf_counter()
        tokens = 0
        if coalesce:
            requests = [ScoreRequest(q, d) for q, d in zip(run.queries, run.docs, strict=True)]
            for result in backend.score_requests(requests):
                assert not isinstance(result, Exception), result
                tokens += result[1]["scored_tokens"]
        else:
            for query, docs in zip(run.queries, run.docs, strict=True):
                _, meta = backend.score_with_meta(query, docs)
                tokens += meta["scored_tokens"]
        runs.append(time.perf_counter() - start)
    best = min(runs)
    return {
        "backend": backend.name + (" (queries coalesced)" if coalesce else ""),
        "model": backend.model_name,
        "pairs": workload.pairs,
        "tokens": tokens,
        "mean_tokens_per_pair": round(tokens / workload.pairs, 1),
        "best_s": round(best, 4),
        "pairs_per_s": round(workload.pairs / best, 1),
        "tokens_per_s": round(tokens / best, 1),
        "mean_pairs_per_s": round(workload.pairs * len(runs) / sum(runs), 1),
        # the batch sizes in force (on a GPU they may follow the model's size)
        "max_batch_tokens": backend.options.max_batch_tokens,
        "infer_batch_size": backend.options.infer_batch_size,
        **backend.meta_extra(),
        **gpu_info(),
        "peak_host_mem_gib": peak_host_mem_gib(),
    }


def run_baseline(
    backend: RerankBackend, workload: Workload, repeat: int = 3, first: int = 0
) -> dict[str, Any] | None:
    """Time the raw counterpart of ``backend`` (see :mod:`reranker.bench.baselines`) on workloads
    ``first`` onwards of :func:`fresh_workloads`."""
    from reranker.bench.baselines import BASELINES

    if backend.name not in BASELINES:
        return None
    label, fn = BASELINES[backend.name]
    fn(backend, Workload(workload.queries[:1], [workload.docs[0][:8]]))  # warm-up
    runs = []
    pairs = 0
    for run in fresh_workloads(workload, repeat, first):
        start = time.perf_counter()
        pairs = fn(backend, run)
        runs.append(time.perf_counter() - start)
    best = min(runs)
    return {
        "backend": f"baseline:{backend.name}",
        "baseline": label,
        "model": backend.model_name,
        "pairs": pairs,
        "best_s": round(best, 4),
        "pairs_per_s": round(pairs / best, 1),
        "mean_pairs_per_s": round(pairs * len(runs) / sum(runs), 1),
        **gpu_info(),
        "peak_host_mem_gib": peak_host_mem_gib(),
    }


def format_result(result: dict[str, Any]) -> str:
    """One human line plus the JSON record."""
    tokens = f", {result['tokens_per_s']} tokens/s" if "tokens_per_s" in result else ""
    per_pair = result.get("mean_tokens_per_pair", "?")
    line = (
        f"{result['backend']}: {result['pairs_per_s']} pairs/s{tokens} ({result['pairs']} "
        f"pairs, {per_pair} tokens/pair, best run {result['best_s']} s) on {result['device']}"
    )
    return line + "\n" + json.dumps(result)
