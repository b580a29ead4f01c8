"""Comparison metrics and data loading, checked against numbers worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("ranx")

from reranker.compare.data import load_items, read_qrels, read_run  # noqa: E402
from reranker.compare.metrics import agreement, percentile, quality, ranks, top_overlap  # noqa: E402
from reranker.compare.report import disagreements, threshold_failures, to_markdown  # noqa: E402
from reranker.compare.sides import parse_spec  # noqa: E402
from reranker.core.errors import InvalidRequest  # noqa: E402


def test_identical_scores_agree_perfectly():
    s = [0.9, 0.1, 0.5, 0.7]
    a = agreement(s, s)
    assert a["spearman"] == 1.0 and a["kendall"] == 1.0
    assert a["top1_overlap"] == a["top5_overlap"] == a["top10_overlap"] == 1.0
    assert a["mean_rank_change"] == 0.0 and a["max_abs_diff"] == 0.0


def test_reversed_scores_by_hand():
    a = agreement([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4])
    assert a["spearman"] == pytest.approx(-1.0) and a["kendall"] == pytest.approx(-1.0)
    assert a["top1_overlap"] == 0.0
    # ranks A: 0 1 2 3, B: 3 2 1 0 -> moves 3 1 1 3
    assert a["mean_rank_change"] == 2.0 and a["max_rank_change"] == 3.0
    assert a["mean_abs_diff"] == pytest.approx((0.3 + 0.1 + 0.1 + 0.3) / 4)


def test_top_overlap_and_ranks_by_hand():
    a, b = [5, 4, 3, 2, 1, 0], [5, 4, 0, 1, 2, 3]
    assert ranks(b) == [0, 1, 5, 4, 3, 2]
    assert top_overlap(a, b, 2) == 1.0
    assert top_overlap(a, b, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {0,1,5}
    assert top_overlap(a, b, 10) == 1.0  # capped at the list size


def test_percentile_nearest_rank():
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95


def test_quality_by_hand():
    qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"e2": 1}}
    run_a = {"q1": {"d1": 0.9, "d2": 0.5, "d3": 0.7}, "q2": {"e1": 0.9, "e2": 0.8}}
    run_b = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}, "q2": {"e1": 0.1, "e2": 0.8}}
    q = quality(qrels, run_a, run_b)
    # q1, A: d1(2) d3(0) d2(1): DCG = 2 + 1/log2(4) = 2.5; IDCG = 2 + 1/log2(3)
    ndcg_q1_a = 2.5 / (2 + 1 / math.log2(3))
    # q2, A: e1(0) e2(1): DCG = 1/log2(3); IDCG = 1
    ndcg_q2_a = 1 / math.log2(3)
    assert q["per_query"]["q1"]["ndcg@10"]["a"] == pytest.approx(ndcg_q1_a)
    assert q["per_query"]["q2"]["ndcg@10"]["a"] == pytest.approx(ndcg_q2_a)
    assert q["per_query"]["q1"]["ndcg@10"]["b"] == pytest.approx(1.0)
    assert q["mean"]["ndcg@10"]["a"] == pytest.approx((ndcg_q1_a + ndcg_q2_a) / 2)
    assert q["mean"]["mrr@10"]["a"] == pytest.approx((1 + 0.5) / 2)
    # AP q1 A: relevant at ranks 1 and 3 -> (1 + 2/3) / 2; q2 A: rank 2 -> 1/2
    assert q["mean"]["map"]["a"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert q["mean"]["map"]["b"] == pytest.approx(1.0)
    assert 0.0 <= q["tests"]["ndcg@10"]["paired_t_p"] <= 1.0


def test_thresholds():
    report = {
        "overall": {"spearman": 0.95},
        "quality": {"mean": {"ndcg@10": {"a": 0.60, "b": 0.55}}},
    }
    assert threshold_failures(report, 0.9, 0.1) == []
    fails = threshold_failures(report, 0.99, 0.01)
    assert len(fails) == 2 and "spearman" in fails[0] and "nDCG@10" in fails[1]
    assert "labels" in threshold_failures({"overall": {"spearman": 1.0}}, None, 0.1)[0]


def test_specs():
    s = parse_spec("qwen3_vllm:model_name=/m,max_model_len=512,config=c.yaml,venv=/v")
    assert s.backend == "qwen3_vllm" and s.config == "c.yaml" and s.python == "/v/bin/python"
    assert s.options == {"model_name": "/m", "max_model_len": 512}
    assert parse_spec("http://127.0.0.1:8000/").url == "http://127.0.0.1:8000"
    with pytest.raises(InvalidRequest):
        parse_spec("qwen3_vllm:oops")


def test_beir_and_trec_loading(tmp_path):
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "capital?"}) + "\n")
    corpus = [
        {"_id": "a", "title": "Paris", "text": "capital of France"},
        {"_id": "b", "text": "bananas"},
        {"_id": "c", "text": "Berlin"},
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\ta\t2\n1\tc\t1\n")
    run = tmp_path / "run.trec"
    run.write_text("1 Q0 b 1 9.0 bm25\n1 Q0 a 2 8.0 bm25\n1 Q0 c 3 7.0 bm25\n")
    assert read_run(run, 2) == {"1": ["b", "a"]}
    assert read_qrels(tmp_path / "qrels.tsv") == {"1": {"a": 2, "c": 1}}
    [item] = load_items(str(tmp_path), str(run))
    assert item.doc_ids == ["b", "a", "c"] and item.labels == [0, 2, 1]
    assert item.docs[1] == "Paris\ncapital of France"
    with pytest.raises(InvalidRequest, match="--run"):
        load_items(str(tmp_path))


def test_sample_dataset_shape():
    from pathlib import Path

    items = load_items(str(Path(__file__).parents[2] / "data/sample/rerank_sample.jsonl"))
    assert len(items) == 30
    assert all(len(i.docs) == 20 and set(i.labels or []) == {0, 1, 2} for i in items)
    assert any(len(d) > 2000 for i in items for d in i.docs)  # long documents


def test_only_queries_ranked_differently_are_disagreements():
    from reranker.compare.data import QueryItem

    items = [
        QueryItem(q, f"query {q}", ["d0", "d1", "d2"], ["0", "1", "2"]) for q in ("same", "swapped")
    ]
    per_query = [
        {"qid": "same", "query": "query same", "scores_a": [0.9, 0.5, 0.1],
         "scores_b": [0.8, 0.4, 0.2], **agreement([0.9, 0.5, 0.1], [0.8, 0.4, 0.2])},
        {"qid": "swapped", "query": "query swapped", "scores_a": [0.9, 0.5, 0.1],
         "scores_b": [0.4, 0.5, 0.1], **agreement([0.9, 0.5, 0.1], [0.4, 0.5, 0.1])},
    ]  # fmt: skip
    report = {"per_query": per_query}
    assert [w["qid"] for w in disagreements(report, items)] == ["swapped"]
    assert disagreements({"per_query": per_query[:1]}, items[:1]) == []
    side = {"spec": "http://127.0.0.1:1", "model": "m", "backend": "b", "device": "cpu",
            "dtype": "float32"}  # fmt: skip
    full = {
        "a": side, "b": side, "queries": 1, "pairs": 3, "per_query": per_query[:1],
        "overall": {k: 1.0 for k in ("spearman", "min_spearman", "kendall", "top1_overlap",
                    "top5_overlap", "top10_overlap", "mean_rank_change", "mean_abs_diff",
                    "max_abs_diff")},
        "speed": {s: {"p50_ms": 1.0, "p95_ms": 1.0, "pairs_per_s": 1.0} for s in "ab"},
    }  # fmt: skip
    md = to_markdown(full, [])
    assert "Both sides rank every query alike" in md
    assert "`http://127.0.0.1:1` (model m, backend b, device cpu, dtype float32)" in md
