"""Run a comparison and write it as Markdown, JSON and a PNG scatter plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reranker.compare.data import QueryItem
from reranker.compare.metrics import QUALITY_METRICS, agreement, percentile, quality
from reranker.compare.sides import Side

# Spearman within this of 1 counts as the same ranking (float noise in the statistic).
RANK_TOLERANCE = 1e-9

AGREEMENT_KEYS = (
    "spearman",
    "kendall",
    "top1_overlap",
    "top5_overlap",
    "top10_overlap",
    "mean_rank_change",
    "mean_abs_diff",
    "max_abs_diff",
)


def run_comparison(
    items: list[QueryItem], a: Side, b: Side, progress: bool = True
) -> dict[str, Any]:
    """Score every item on both sides (the same lists) and compute the report."""
    from tqdm import tqdm

    per_query = []
    all_a: list[float] = []
    all_b: list[float] = []
    for item in tqdm(items, desc="comparing", unit="query", disable=not progress):
        sa, sb = a.score(item.query, item.docs), b.score(item.query, item.docs)
        all_a += sa
        all_b += sb
        per_query.append(
            {
                "qid": item.qid,
                "query": item.query,
                "scores_a": sa,
                "scores_b": sb,
                **agreement(sa, sb),
            }
        )
    overall = {k: sum(q[k] for q in per_query) / len(per_query) for k in AGREEMENT_KEYS}
    overall["min_spearman"] = min(q["spearman"] for q in per_query)
    overall["max_abs_diff"] = max(q["max_abs_diff"] for q in per_query)
    report: dict[str, Any] = {
        "a": {"spec": a.spec.label, **a.runtime, "model": a.model},
        "b": {"spec": b.spec.label, **b.runtime, "model": b.model},
        "queries": len(items),
        "pairs": sum(len(i.docs) for i in items),
        "overall": overall,
        "per_query": per_query,
        "speed": {side: _speed(s) for side, s in (("a", a), ("b", b))},
        "scatter": {"a": all_a, "b": all_b},
    }
    labelled = [i for i in items if i.labels is not None]
    if labelled:
        qrels = {
            i.qid: {d: lab for d, lab in zip(i.doc_ids, i.labels or [], strict=True) if lab > 0}
            for i in labelled
        }
        qrels = {q: r for q, r in qrels.items() if r}
        by_qid = {q["qid"]: q for q in per_query}
        run_a = {
            i.qid: dict(zip(i.doc_ids, by_qid[i.qid]["scores_a"], strict=True))
            for i in labelled
            if i.qid in qrels
        }
        run_b = {
            i.qid: dict(zip(i.doc_ids, by_qid[i.qid]["scores_b"], strict=True))
            for i in labelled
            if i.qid in qrels
        }
        if qrels:
            report["quality"] = quality(qrels, run_a, run_b)
    return report


def _speed(side: Side) -> dict[str, float]:
    total = sum(side.latencies_s)
    return {
        "p50_ms": 1000 * percentile(side.latencies_s, 50),
        "p95_ms": 1000 * percentile(side.latencies_s, 95),
        "pairs_per_s": side.pairs / total if total else 0.0,
    }


def disagreements(report: dict[str, Any], items: list[QueryItem], n: int = 5) -> list[dict]:
    """The ``n`` queries where the sides' rankings differ most, with each side's top 3;
    queries both sides rank alike (Spearman 1) are not disagreements."""
    docs = {i.qid: i.docs for i in items}
    differ = [q for q in report["per_query"] if q["spearman"] < 1.0 - RANK_TOLERANCE]
    worst = sorted(differ, key=lambda q: (q["spearman"], -q["max_abs_diff"]))[:n]
    out = []
    for q in worst:

        def top3(scores: list[float], qid: str = q["qid"]) -> list[str]:
            best = sorted(range(len(scores)), key=lambda i: -scores[i])[:3]
            return [f"[{i}] {scores[i]:.3f} {docs[qid][i][:90]!r}" for i in best]

        out.append(
            {
                "qid": q["qid"],
                "query": q["query"],
                "spearman": q["spearman"],
                "top_a": top3(q["scores_a"]),
                "top_b": top3(q["scores_b"]),
            }
        )
    return out


def _side_line(side: dict[str, Any]) -> str:
    """``spec``: model, backend, device and dtype, as the side's responses reported them."""
    facts = [f"{k} {side[k]}" for k in ("model", "backend", "device", "dtype") if side.get(k)]
    return f"`{side['spec']}`" + (f" ({', '.join(facts)})" if facts else "")


def to_markdown(report: dict[str, Any], worst: list[dict]) -> str:
    """The human report."""
    o, s = report["overall"], report["speed"]
    lines = [
        "# Reranker comparison",
        "",
        f"- A: {_side_line(report['a'])}",
        f"- B: {_side_line(report['b'])}",
        f"- {report['queries']} queries, {report['pairs']} pairs, both sides scored the same lists",
        "",
        "## Agreement (mean over queries)",
        "",
        "| spearman | min spearman | kendall | top-1 | top-5 | top-10 | mean rank change | "
        "mean abs diff | max abs diff |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {o['spearman']:.4f} | {o['min_spearman']:.4f} | {o['kendall']:.4f} | "
        f"{o['top1_overlap']:.3f} | {o['top5_overlap']:.3f} | {o['top10_overlap']:.3f} | "
        f"{o['mean_rank_change']:.2f} | {o['mean_abs_diff']:.2e} | {o['max_abs_diff']:.2e} |",
        "",
        "## Speed",
        "",
        "| side | p50 ms/query | p95 ms/query | pairs/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for side in ("a", "b"):
        lines.append(
            f"| {side.upper()} | {s[side]['p50_ms']:.1f} | {s[side]['p95_ms']:.1f} | "
            f"{s[side]['pairs_per_s']:.1f} |"
        )
    if "quality" in report:
        qm = report["quality"]
        lines += [
            "",
            "## Quality (labels)",
            "",
            "| metric | A | B | B − A | paired t p | Wilcoxon p |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in QUALITY_METRICS:
            a, b = qm["mean"][m]["a"], qm["mean"][m]["b"]
            t = qm["tests"][m]
            lines.append(
                f"| {m} | {a:.4f} | {b:.4f} | {b - a:+.4f} | "
                f"{t['paired_t_p']:.3g} | {t['wilcoxon_p']:.3g} |"
            )
    lines += ["", "## Where they disagree most", ""]
    if not worst:
        lines += ["Both sides rank every query alike (Spearman 1).", ""]
    for w in worst:
        lines += [
            f"### {w['qid']}: {w['query']} (spearman {w['spearman']:.4f})",
            "",
            "A's top 3:",
            *[f"- {t}" for t in w["top_a"]],
            "",
            "B's top 3:",
            *[f"- {t}" for t in w["top_b"]],
            "",
        ]
    lines += ["![score A against score B](scatter.png)", ""]
    return "\n".join(lines)


def scatter_png(report: dict[str, Any], path: Path) -> None:
    """Score A against score B, every pair, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.scatter(report["scatter"]["a"], report["scatter"]["b"], s=6, alpha=0.5)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set_xlabel(f"A: {report['a']['spec']}"[:60])
    ax.set_ylabel(f"B: {report['b']['spec']}"[:60])
    ax.set_title(f"spearman {report['overall']['spearman']:.4f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], items: list[QueryItem], out: Path) -> None:
    """report.md, report.json, scatter.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    worst = disagreements(report, items)
    (out / "report.md").write_text(to_markdown(report, worst), encoding="utf-8")
    public = {k: v for k, v in report.items() if k != "scatter"}
    public["disagreements"] = worst
    (out / "report.json").write_text(json.dumps(public, indent=2), encoding="utf-8")
    scatter_png(report, out / "scatter.png")


def threshold_failures(
    report: dict[str, Any], min_spearman: float | None, max_ndcg_drop: float | None
) -> list[str]:
    """Why a swap from A to B would hurt, per the thresholds (empty: it would not)."""
    fails = []
    if min_spearman is not None and report["overall"]["spearman"] < min_spearman:
        fails.append(f"mean spearman {report['overall']['spearman']:.4f} < {min_spearman}")
    if max_ndcg_drop is not None:
        if "quality" not in report:
            fails.append("--max-ndcg-drop needs labels (labels in the data or --qrels)")
        else:
            nd = report["quality"]["mean"]["ndcg@10"]
            if nd["a"] - nd["b"] > max_ndcg_drop:
                fails.append(f"nDCG@10 drops by {nd['a'] - nd['b']:.4f} (> {max_ndcg_drop})")
    return fails
