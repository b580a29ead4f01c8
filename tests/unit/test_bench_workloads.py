"""The benchmark's workloads: same shape, new texts in every repeat of every phase."""

from __future__ import annotations

from reranker.bench.runner import fresh_workloads
from reranker.bench.workload import make_workload


def test_each_phase_times_documents_no_earlier_phase_saw():
    base = make_workload(2, 5, 10, 40, 7)
    per_query, coalesced = fresh_workloads(base, 3), fresh_workloads(base, 3, first=3)
    assert per_query[0] is base
    assert fresh_workloads(base, 2, first=1)[0].docs == per_query[1].docs  # deterministic
    runs = per_query + coalesced
    docs = [tuple(map(tuple, run.docs)) for run in runs]
    assert len(set(docs)) == 6
    assert all(run.shape == {**base.shape, "seed": run.shape["seed"]} for run in runs)
    assert all(run.pairs == base.pairs for run in runs)
