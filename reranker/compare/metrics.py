"""Agreement between two score lists, and ranking quality against graded labels (ranx)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

QUALITY_METRICS = ("ndcg@10", "mrr@10", "map")


def ranks(scores: Sequence[float]) -> list[int]:
    """Rank (0 = best) of each item; ties keep input order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = [0] * len(scores)
    for r, i in enumerate(order):
        out[i] = r
    return out


def top_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """Share of the top-k of A that is also in the top-k of B (k capped at the list size)."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:k])  # noqa: E731
    return len(top(a) & top(b)) / k


def _correlation(fn: Any, a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 2:
        return 1.0
    if len(set(a)) == 1 or len(set(b)) == 1:  # constant side: defined only if both agree
        return 1.0 if list(a) == list(b) else 0.0
    value = float(fn(a, b)[0])
    return 0.0 if math.isnan(value) else value


def agreement(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Spearman, Kendall, top-1/5/10 overlap, rank changes and score differences."""
    from scipy.stats import kendalltau, spearmanr

    ra, rb = ranks(a), ranks(b)
    moves = [abs(x - y) for x, y in zip(ra, rb, strict=True)]
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return {
        "spearman": _correlation(spearmanr, a, b),
        "kendall": _correlation(kendalltau, a, b),
        "top1_overlap": top_overlap(a, b, 1),
        "top5_overlap": top_overlap(a, b, 5),
        "top10_overlap": top_overlap(a, b, 10),
        "mean_rank_change": sum(moves) / len(moves) if moves else 0.0,
        "max_rank_change": float(max(moves, default=0)),
        "mean_abs_diff": sum(diffs) / len(diffs) if diffs else 0.0,
        "max_abs_diff": max(diffs, default=0.0),
    }


def quality(
    qrels: dict[str, dict[str, int]],
    run_a: dict[str, dict[str, float]],
    run_b: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """nDCG@10, MRR@10 and MAP of each side (ranx), per query and mean, with a paired
    t-test and a Wilcoxon signed-rank test per metric."""
    from ranx import Qrels, Run, evaluate
    from scipy.stats import ttest_rel, wilcoxon

    q = Qrels(qrels)
    per_a = evaluate(q, Run(run_a), list(QUALITY_METRICS), return_mean=False)
    per_b = evaluate(q, Run(run_b), list(QUALITY_METRICS), return_mean=False)
    qids = sorted(qrels)
    out: dict[str, Any] = {"per_query": {}, "mean": {}, "tests": {}}
    for m in QUALITY_METRICS:
        a = [float(x) for x in per_a[m]]
        b = [float(x) for x in per_b[m]]
        out["mean"][m] = {"a": sum(a) / len(a), "b": sum(b) / len(b)}
        for qid, x, y in zip(qids, a, b, strict=True):
            out["per_query"].setdefault(qid, {})[m] = {"a": x, "b": y}
        same = all(abs(x - y) < 1e-12 for x, y in zip(a, b, strict=True))
        t_p = 1.0 if same else float(ttest_rel(a, b).pvalue)
        w_p = 1.0 if same else float(wilcoxon(a, b, zero_method="zsplit").pvalue)
        out["tests"][m] = {
            "paired_t_p": 1.0 if math.isnan(t_p) else t_p,
            "wilcoxon_p": 1.0 if math.isnan(w_p) else w_p,
        }
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]
