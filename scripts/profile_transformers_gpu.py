"""Where the time of one coalesced benchmark request goes in ``qwen3_transformers`` (GPU).

    python scripts/profile_transformers_gpu.py MODEL_DIR [--option KEY=VALUE ...]

Prints, for the benchmark workload (4 queries x 100 documents) sent as one
``score_requests`` call: the host-side stages (tokenising, batch planning), the GPU time of
the forward passes, the whole call, the top CUDA kernels (torch.profiler) grouped by kind,
and the throughput of the decoder's four matmul shapes alone (the ceiling for this model).
A developer tool for the performance work in docs/benchmarks.md; not used by tests.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any


def _options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def _kind(kernel: str) -> str:
    name = kernel.lower()
    if name.startswith("triton"):  # inductor's fused kernels, named after the ops they hold
        return "elementwise/other (triton)"
    for kind, marks in (  # attention first: FlashAttention kernels are cutlass templates
        ("attention", ("flash", "fmha")),
        ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas")),
        ("copy/gather", ("copy", "gather", "index", "cat")),
    ):
        if any(m in name for m in marks):
            return kind
    return "elementwise/other"


def _matmul_ceiling(hidden: int, inter: int, q_dim: int, kv_dim: int, tokens: int) -> None:
    import torch

    shapes = {
        "qkv": (hidden, q_dim + 2 * kv_dim),
        "o": (q_dim, hidden),
        "gate_up": (hidden, 2 * inter),
        "down": (inter, hidden),
    }
    total_flop = total_s = 0.0
    for name, (k, n) in shapes.items():
        x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            x @ w.T
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            x @ w.T
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 20
        flop = 2 * tokens * k * n
        total_flop += flop
        total_s += seconds
        print(f"  {name:8s} ({tokens}x{k} @ {k}x{n}): {flop / seconds / 1e12:6.1f} TFLOP/s")
    print(f"  one layer's matmuls: {total_flop / total_s / 1e12:.1f} TFLOP/s")


def main() -> None:
    """Run the profile (see the module docstring)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from reranker.backends._jobs import FlatPrompts
    from reranker.backends.qwen3_transformers import Qwen3TransformersBackend
    from reranker.batching import plan_batches
    from reranker.bench import fresh_workloads
    from reranker.protocol import ScoreJob, ScoreRequest
    from reranker.workload import make_workload

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--option", action="append", default=[])
    args = parser.parse_args()
    start = time.perf_counter()
    backend = Qwen3TransformersBackend({"model_name": args.model, **_options(args.option)})
    print(f"startup {time.perf_counter() - start:.1f} s; meta {backend.meta_extra()}")
    workloads = fresh_workloads(make_workload(4, 100, 100, 1250, 0), 4)
    requests = [
        [ScoreRequest(q, d) for q, d in zip(w.queries, w.docs, strict=True)] for w in workloads
    ]
    backend.score_requests(requests[0])  # warm-up

    jobs = [ScoreJob(r.query, r.docs, backend.options.instruction, None) for r in requests[1]]
    t0 = time.perf_counter()
    flat = FlatPrompts.build(backend._encoder, jobs)
    t1 = time.perf_counter()
    opts = backend.options
    batches = plan_batches(
        flat.lengths, opts.max_batch_tokens, opts.infer_batch_size, padded=not backend.packed
    )
    t2 = time.perf_counter()
    tokens = sum(flat.lengths)
    print(
        f"pairs {len(flat.lengths)} tokens {tokens}; planned as one wave: {len(batches)} "
        f"batches (sizes {[len(b) for b in batches]})\n"
        f"  tokenise+encode {1e3 * (t1 - t0):.1f} ms, plan {1e3 * (t2 - t1):.1f} ms"
    )
    t7 = time.perf_counter()
    backend.score_requests(requests[2])
    t8 = time.perf_counter()
    print(f"  whole coalesced call: {1e3 * (t8 - t7):.1f} ms -> {400 / (t8 - t7):.0f} pairs/s")
    t9 = time.perf_counter()
    for request in requests[1]:
        backend.score_requests([request])
    t10 = time.perf_counter()
    print(f"  one call per query: {1e3 * (t10 - t9):.1f} ms -> {400 / (t10 - t9):.0f} pairs/s")

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        backend.score_requests(requests[3])
        torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    rows = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if event.device_type.name == "CUDA":
            by_kind[_kind(event.key)] += cuda_us
            rows.append((cuda_us, event.count, event.key))
    total = sum(by_kind.values()) or 1.0
    print(f"CUDA kernel time {total / 1e3:.1f} ms:")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:28s} {us / 1e3:8.1f} ms  {100 * us / total:5.1f}%")
    for us, count, key in sorted(rows, reverse=True)[:20]:
        print(f"  {us / 1e3:8.2f} ms x{count:5d}  {key[:110]}")

    cfg = backend._model.config
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    print("matmul ceiling (bf16):")
    _matmul_ceiling(cfg.hidden_size, cfg.intermediate_size, q_dim, kv_dim, opts.max_batch_tokens)


if __name__ == "__main__":
    main()
