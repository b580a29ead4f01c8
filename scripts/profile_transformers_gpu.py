"""Where the time of one coalesced benchmark request goes in ``qwen3_transformers`` (GPU).

    python scripts/profile_transformers_gpu.py MODEL_DIR [--option KEY=VALUE ...]
        [--queries 4] [--docs 100] [--no-ceiling] [--head-docs N] [--chunk-docs N]
        [--chunked-above N]

Prints, for the benchmark workload (4 queries x 100 documents; ``--queries``/``--docs``
change it, e.g. ``--queries 1 --docs 10`` for a small request) sent as one
``score_requests`` call: the host-side stages (tokenising, batch planning), the GPU time of
the forward passes, the whole call, the top CUDA kernels (torch.profiler) grouped by kind,
and the throughput of the decoder's four matmul shapes alone (the ceiling for this model),
and the timeline of that call: how long the GPU sat idle, where, and what the host was
doing meanwhile (``--trace FILE.json.gz`` also keeps the Chrome trace).
A developer tool behind the measurements in docs/performance.md; not used by tests.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import tempfile
import time
from collections import defaultdict
from typing import Any


def _options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def _kind(kernel: str) -> str:
    name = kernel.lower()
    if "swiglu" in name:  # ours: the gate and up GEMMs with the SiLU gating
        return "matmul"
    if name.startswith("triton") or "norm_rope" in name:  # inductor's fused kernels, ours
        return "elementwise/other (triton)"
    for kind, marks in (  # attention first: FlashAttention kernels are cutlass templates
        ("attention", ("flash", "fmha")),
        ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas")),
        ("copy/gather", ("copy", "gather", "index", "cat")),
    ):
        if any(m in name for m in marks):
            return kind
    return "elementwise/other"


def _annotate(backend: Any) -> None:
    """Name the host's stages of a call in the profiler's timeline."""
    from torch.profiler import record_function

    from reranker.backends.transformers import qwen3 as qwen3_transformers

    def named(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with record_function(name):
                return fn(*args, **kwargs)

        return wrapper

    backend._encoder.encode = named("tokenise", backend._encoder.encode)
    backend._forward = named("forward", backend._forward)
    if backend._graphs:
        backend._graphs.run = named("graph", backend._graphs.run)
    qwen3_transformers.pack = named("pack", qwen3_transformers.pack)


def _timeline(trace: dict[str, Any]) -> None:
    """GPU idle time within the profiled call, its largest gaps, and the host meanwhile."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    call = next(e for e in events if e.get("name") == "call")
    start, end = call["ts"], call["ts"] + call["dur"]
    gpu = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and start <= e["ts"] <= end
    )
    host = [e for e in events if e.get("cat") in ("user_annotation", "cuda_runtime")]
    gaps, busy_until = [], start
    for s, e in gpu:
        if s > busy_until:
            gaps.append((s - busy_until, busy_until))
        busy_until = max(busy_until, e)
    gaps.append((end - busy_until, busy_until))
    idle = sum(g for g, _ in gaps)
    print(
        f"timeline: call {(end - start) / 1e3:.1f} ms, GPU idle {idle / 1e3:.1f} ms in "
        f"{len(gaps)} gaps (before the first kernel {gaps[0][0] / 1e3:.1f} ms, after the "
        f"last {gaps[-1][0] / 1e3:.1f} ms)"
    )
    for low, high in ((0, 20), (20, 200), (200, 1e12)):
        part = [g for g, _ in gaps if low <= g < high]
        print(f"  gaps {low}-{high:g} us: {len(part)}, {sum(part) / 1e3:.1f} ms")
    for length, at in sorted(gaps, reverse=True)[:12]:
        doing = sorted(
            (e["dur"], e["name"]) for e in host if e["ts"] <= at + length / 2 <= e["ts"] + e["dur"]
        )
        print(
            f"  {length / 1e3:6.2f} ms idle at +{(at - start) / 1e3:6.1f} ms; host in: "
            + ", ".join(name[:40] for _, name in doing[:4])
        )
    for name in (
        "tokenise",
        "pack",
        "forward",
        "graph",
        "cudaGraphLaunch",
        "cudaMemcpyAsync",
        "cudaLaunchKernel",
    ):
        spans = [e for e in host if e["name"] == name and start <= e["ts"] <= end]
        print(
            f"  host {name}: {len(spans)} x, {sum(e['dur'] for e in spans) / 1e3:.1f} ms: "
            + " ".join(f"+{(e['ts'] - start) / 1e3:.0f}/{e['dur'] / 1e3:.1f}" for e in spans[:8])
        )


def _layer_shapes(hidden: int, inter: int, q_dim: int, kv_dim: int) -> dict[str, tuple[int, int]]:
    """A decoder layer's four matmuls as (inner width, output width)."""
    return {
        "qkv": (hidden, q_dim + 2 * kv_dim),
        "o": (q_dim, hidden),
        "gate_up": (hidden, 2 * inter),
        "down": (inter, hidden),
    }


def _matmul_ceiling(hidden: int, inter: int, q_dim: int, kv_dim: int, tokens: int) -> None:
    import torch

    shapes = _layer_shapes(hidden, inter, q_dim, kv_dim)
    total_flop = total_s = 0.0
    for name, (k, n) in shapes.items():
        x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        seconds = _timed(lambda x=x, w=w: x @ w.T)
        flop = 2 * tokens * k * n
        total_flop += flop
        total_s += seconds
        print(f"  {name:8s} ({tokens}x{k} @ {k}x{n}): {flop / seconds / 1e12:6.1f} TFLOP/s")
    print(f"  one layer's matmuls: {total_flop / total_s / 1e12:.1f} TFLOP/s")


def _timed(fn: Any, repeat: int = 20) -> float:
    """Seconds a call of ``fn`` takes on the GPU (mean of ``repeat`` after 3 warm-ups)."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def _fp8_ceiling(hidden: int, inter: int, q_dim: int, kv_dim: int, tokens: int) -> None:
    """The fp8 counterparts of :func:`_matmul_ceiling`: ``torch._scaled_mm`` with row-wise
    scales per shape, the per-token quantisation of an input, and the MLP's first half as
    a ``_scaled_mm`` of the merged gate/up weight + gating vs the fused fp8 kernel."""
    import torch

    from reranker.backends.transformers import fp8
    from reranker.backends.transformers.kernels import fp8_swiglu

    def operand(rows: int, k: int) -> Any:
        return fp8.quantize_rows(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16))

    shapes = _layer_shapes(hidden, inter, q_dim, kv_dim)
    for fast in (False, True):  # fp8_fast_accum
        total_flop = total_s = 0.0
        label = "fast accumulation" if fast else "float32 accumulation"
        for name, (k, n) in shapes.items():
            x, sx = operand(tokens, k)
            w, sw = operand(n, k)
            wt, swt = w.t(), sw.t().contiguous()
            seconds = _timed(
                lambda x=x, sx=sx, wt=wt, swt=swt, fast=fast: torch._scaled_mm(
                    x, wt, scale_a=sx, scale_b=swt, out_dtype=torch.bfloat16, use_fast_accum=fast
                )
            )
            flop = 2 * tokens * k * n
            total_flop += flop
            total_s += seconds
            print(
                f"  fp8 {name:8s} ({tokens}x{k} @ {k}x{n}), {label}: "
                f"{flop / seconds / 1e12:6.1f} TFLOP/s"
            )
        print(f"  one layer's fp8 matmuls, {label}: {total_flop / total_s / 1e12:.1f} TFLOP/s")
    quantize = torch.compile(fp8.quantize_rows, dynamic=True)
    for k in (hidden, inter):
        a = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        print(
            f"  quantise ({tokens}x{k}, compiled): {1e3 * _timed(lambda a=a: quantize(a)):.3f} ms"
        )
    x, sx = operand(tokens, hidden)
    w, sw = operand(2 * inter, hidden)
    gate, up, sg, su = w[:inter], w[inter:], sw[:inter].t(), sw[inter:].t()

    def unfused() -> Any:
        out = torch._scaled_mm(  # as the layers run by default (fp8_fast_accum)
            x, w.t(), scale_a=sx, scale_b=sw.t(), out_dtype=torch.bfloat16, use_fast_accum=True
        )
        g, u = out.chunk(2, dim=-1)
        return torch.nn.functional.silu(g) * u

    flop = 2 * tokens * hidden * 2 * inter
    forms: list[tuple[str, Any]] = [("_scaled_mm + silu*up (compiled)", torch.compile(unfused))]
    why_not = fp8_swiglu.self_check("cuda", torch.bfloat16)  # Triton, TMA (sm90+)
    if why_not is None:
        op = fp8_swiglu.fused_op()
        forms.append(("fp8_swiglu kernel", lambda: op(x, sx, gate, sg, up, su, torch.bfloat16)))
    else:
        print(f"  (no fp8_swiglu kernel here: {why_not})")
    for label, fn in forms:
        seconds = _timed(fn)
        print(
            f"  MLP first half, {label}: {1e3 * seconds:.3f} ms, "
            f"{flop / seconds / 1e12:.0f} TFLOP/s"
        )


def main() -> None:
    """Run the profile (see the module docstring)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from reranker.backends.transformers.jobs import FlatPrompts
    from reranker.backends.transformers.qwen3 import Qwen3TransformersBackend
    from reranker.bench.runner import fresh_workloads
    from reranker.bench.workload import make_workload
    from reranker.core.batching import plan_batches
    from reranker.core.protocol import ScoreJob, ScoreRequest

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--trace", help="also write the profiled call's Chrome trace (.json.gz)")
    parser.add_argument("--head-docs", type=int, help="documents a call sends ahead alone")
    parser.add_argument("--chunk-docs", type=int, help="documents tokenised at a time (0: whole)")
    parser.add_argument("--chunked-above", type=int, help="documents a request needs to be chunked")
    parser.add_argument("--no-head-first", action="store_true", help="start read-ahead first")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after warm-up")
    parser.add_argument("--gc-off", action="store_true", help="gc.disable() after warm-up")
    parser.add_argument("--queries", type=int, default=4, help="queries of the workload")
    parser.add_argument("--docs", type=int, default=100, help="documents a query")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceilings")
    args = parser.parse_args()
    start = time.perf_counter()
    backend = Qwen3TransformersBackend({"model_name": args.model, **_options(args.option)})
    print(f"startup {time.perf_counter() - start:.1f} s; meta {backend.meta_extra()}")
    if args.head_docs is not None:
        backend.head_docs = args.head_docs
    if args.chunk_docs is not None:
        backend.chunk_docs = args.chunk_docs
    if args.chunked_above is not None:
        backend.chunked_above = args.chunked_above
    backend.head_first = not args.no_head_first
    graphs = backend._graphs
    workloads = fresh_workloads(make_workload(args.queries, args.docs, 100, 1250, 0), 9)
    requests = [
        [ScoreRequest(q, d) for q, d in zip(w.queries, w.docs, strict=True)] for w in workloads
    ]
    pairs = workloads[0].pairs  # every workload has the same shape
    backend.score_requests(requests[0])  # warm-up
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    if args.gc_off:
        gc.disable()

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
    for label, calls in (
        ("whole coalesced call", [[r] for r in requests[2:5]]),
        ("one call per query", [[[q] for q in r] for r in requests[5:8]]),
    ):
        seconds = []
        for call in calls:
            start = time.perf_counter()
            for each in call:
                backend.score_requests(each)
            seconds.append(time.perf_counter() - start)
        print(
            f"  {label}: best {1e3 * min(seconds):.1f} ms -> {pairs / min(seconds):.0f} pairs/s "
            f"(of {' '.join(f'{1e3 * s:.0f}' for s in seconds)} ms)"
        )

    _annotate(backend)
    replays = graphs.replays if graphs else 0
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        with record_function("call"):
            backend.score_requests(requests[8])
        torch.cuda.synchronize()
    if graphs:
        print(f"CUDA graph replays in the profiled call: {graphs.replays - replays}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, "rb") as f:
            raw = f.read()
    _timeline(json.loads(raw))
    if args.trace:
        with gzip.open(args.trace, "wb") as f:
            f.write(raw)
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

    if args.no_ceiling:
        return
    cfg = backend._model.config
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    print("matmul ceiling (bf16):")
    _matmul_ceiling(cfg.hidden_size, cfg.intermediate_size, q_dim, kv_dim, opts.max_batch_tokens)
    if opts.quantization == "fp8":
        print("matmul ceiling (fp8):")
        _fp8_ceiling(cfg.hidden_size, cfg.intermediate_size, q_dim, kv_dim, opts.max_batch_tokens)


if __name__ == "__main__":
    main()
