"""qwen3_transformers on CUDA starts a call and returns while the GPU runs it
(``overlaps_calls``), and the service's scheduler starts the next call before collecting
the current one: calls queued behind one another on the device get the scores of calls
made one at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pairs import DOCS, MAX_MODEL_LEN, QUERIES
from parity_check import usable

from reranker.core.protocol import ScoreRequest
from reranker.core.registry import load_backend
from reranker.service.scheduler import BatchScheduler

# bf16 rounding across batch shapes; a static buffer overwritten by the next call, or a
# result read before its batches ran, is off by far more
TOLERANCE = 0.01


def worst_gap(got: list[list[float]], want: list[list[float]]) -> float:
    """The largest difference between two lists of score lists."""
    return max(
        abs(x - y) for a, b in zip(got, want, strict=True) for x, y in zip(a, b, strict=True)
    )


def test_calls_queued_behind_each_other_on_the_gpu_score_as_one_at_a_time(tiny_model_dir):
    import torch

    backend = load_backend(
        "qwen3_transformers",
        {"model_name": str(tiny_model_dir), "max_model_len": MAX_MODEL_LEN, "dtype": "bfloat16"},
    )
    try:
        assert backend.overlaps_calls
        docs = [d.strip() for d in DOCS if usable(d)]
        many = [f"{d} ({k})" for k in range(40) for d in docs]  # several waves a call
        requests = [ScoreRequest(q, many if k % 2 else docs) for k, q in enumerate(QUERIES)]
        alone = [backend.score_requests([r])[0][0] for r in requests]
        graphs = backend._graphs  # captured where FlashAttention-3 runs
        replays = graphs.replays if graphs is not None else 0
        # the device held back (~1 s of spinning) while every call is started before any
        # is collected: all are queued behind one another, their inputs copied from
        # pinned buffers the host reuses while the device is behind
        torch.cuda._sleep(2_000_000_000)
        collects = [backend.start_requests([r]) for r in requests]
        queued = [collect()[0][0] for collect in collects]
        if graphs is not None:
            assert graphs.replays >= replays + len(requests)  # each call's first wave
        print(f"queued calls vs one at a time: max |dP| {worst_gap(queued, alone):.3e}")
        assert worst_gap(queued, alone) <= TOLERANCE

        scheduler = BatchScheduler(backend, batch_wait_ms=0, max_call_tokens=8192)
        try:
            assert scheduler.overlap
            with ThreadPoolExecutor(len(requests)) as pool:
                tickets = list(pool.map(scheduler.submit, requests))
                served = [ticket.result(300)[0] for ticket in tickets]
        finally:
            scheduler.close(60)
        print(f"scheduler (calls overlapped) vs alone: max |dP| {worst_gap(served, alone):.3e}")
        assert worst_gap(served, alone) <= TOLERANCE
    finally:
        backend.close()
