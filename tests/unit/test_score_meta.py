"""ScoreMeta: the typed meta of a scoring call reads and serialises as the JSON object of
the API, in the documented key order, and pieces of a split request merge into one."""

import json
import pickle

from reranker.core.meta import ScoreMeta, merge_pieces


def _meta(**changes):
    fields = dict(
        input_docs=5, usable_docs=4, unique_docs=3, dedup_ratio=0.25, elapsed_ms=1.5,
        model="m", backend="b", normalize=True, inference_batches=1, infer_batch_size=8,
        max_batch_tokens=None, sort_by_doc_length=True, max_model_len=4096,
        scored_tokens=100, truncated_docs=1,
        format_keys={"instruction_format": "standard"}, engine_keys={"device": "cpu"},
    )  # fmt: skip
    return ScoreMeta(**{**fields, **changes})


def test_meta_is_the_api_object_in_its_key_order():
    meta = _meta()
    assert list(meta) == [
        "input_docs", "usable_docs", "unique_docs", "dedup_ratio", "elapsed_ms", "model",
        "backend", "normalize", "inference_batches", "infer_batch_size", "max_batch_tokens",
        "sort_by_doc_length", "instruction_format", "max_model_len", "scored_tokens",
        "truncated_docs", "device",
    ]  # fmt: skip
    assert meta["scored_tokens"] == 100 and meta.get("absent") is None
    assert meta == meta.to_dict() and dict(meta) == meta.to_dict()
    assert json.loads(json.dumps(meta.to_dict())) == meta
    assert pickle.loads(pickle.dumps(meta)) == meta  # crosses processes (Ray replicas)


def test_pieces_merge_counts_and_time_and_keep_the_rest():
    a = _meta()
    b = _meta(input_docs=3, usable_docs=3, unique_docs=3, elapsed_ms=2.25, scored_tokens=50,
              truncated_docs=0, inference_batches=2)  # fmt: skip
    merged = merge_pieces([a, b], [[0, 1, 2, 3, 4], [5, 6, 7]], 8)
    assert (merged.input_docs, merged.usable_docs, merged.unique_docs) == (8, 7, 6)
    assert (merged.scored_tokens, merged.truncated_docs, merged.inference_batches) == (150, 1, 3)
    assert merged.elapsed_ms == 3.75 and merged.dedup_ratio == round(1 - 6 / 7, 4)
    assert merged.model == "m" and merged["device"] == "cpu"
