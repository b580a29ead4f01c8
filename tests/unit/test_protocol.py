"""The protocol's contract, on a deterministic in-process backend (no model needed)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fake_plugin"))
from fake_reranker_plugin import LengthBackend, PlainBackend  # noqa: E402

from reranker.core.errors import InvalidRequest  # noqa: E402
from reranker.core.protocol import UNUSABLE_LOGIT, rank_order, sigmoid  # noqa: E402

SEED_META_KEYS = {
    "input_docs",
    "usable_docs",
    "unique_docs",
    "dedup_ratio",
    "elapsed_ms",
    "model",
    "backend",
    "normalize",
    "inference_batches",
    "sort_by_doc_length",
    "infer_batch_size",
    "max_batch_tokens",
    "scored_tokens",
}


@pytest.fixture()
def backend():
    return LengthBackend({"model_name": "fake-model"})


class Unprintable:
    def __str__(self):
        raise RuntimeError("no text")


def test_scores_in_input_order_with_unusable_docs_zero(backend):
    docs = ["aaaa", None, "", "   ", "aa", Unprintable(), b"aaa", 12345, "aaaa"]
    scores, meta = backend.score_with_meta("a", docs, normalize=False)
    u = UNUSABLE_LOGIT
    assert scores == [3.0, u, u, u, 1.0, u, 2.0, 4.0, 3.0]
    assert meta["input_docs"] == 9
    assert meta["usable_docs"] == 5
    assert meta["unique_docs"] == 4
    assert meta["dedup_ratio"] == 0.2
    assert set(meta) >= SEED_META_KEYS
    assert meta["backend"] == "fake_length" and meta["model"] == "fake-model"
    assert backend.calls == 1
    assert backend.score("a", docs) == [0.0 if x == u else sigmoid(x) for x in scores]


def test_normalize_gives_sigmoid_of_the_logit(backend):
    raw = backend.score("ab", ["abcd", "a"], normalize=False)
    prob = backend.score("ab", ["abcd", "a"], normalize=True)
    assert prob == pytest.approx([1 / (1 + math.exp(-x)) for x in raw])
    assert all(0.0 <= p <= 1.0 for p in prob)


def test_blank_query_scores_everything_zero_without_calling_the_model(backend):
    for query in ("", "  \n", None):
        scores, meta = backend.score_with_meta(query, ["x", "y"])
        assert scores == [0.0, 0.0] and meta["inference_batches"] == 0
    assert getattr(backend, "calls", 0) == 0


def test_empty_docs(backend):
    assert backend.score_with_meta("q", [])[0] == []
    assert backend.score_with_meta("q", None)[0] == []


def test_docs_must_be_a_list(backend):
    with pytest.raises(InvalidRequest) as err:
        backend.score_with_meta("q", "not a list")
    assert err.value.param == "docs"


def test_rerank_orders_best_first_and_cuts_top_n(backend):
    assert backend.rerank("a", ["aa", "aaaa", "aaa"], top_n=2) == [
        (1, pytest.approx(sigmoid(3.0))),
        (2, pytest.approx(sigmoid(2.0))),
    ]
    with pytest.raises(InvalidRequest):
        backend.rerank("a", ["aa"], top_n=0)


def test_sigmoid_is_stable_at_the_extremes():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0 and sigmoid(0.0) == 0.5


def test_context_manager_closes(backend):
    with backend as b:
        assert b.score("a", ["aa"])


def test_options_passed_as_a_model_keep_what_the_user_left_unset():
    """A backend picks device defaults only for options nobody set (GPU batch budget)."""
    from reranker.core.options import BackendOptions

    options = BackendOptions(model_name="fake-model", infer_batch_size=8)
    backend = LengthBackend(options)
    assert backend.options.model_fields_set == {"model_name", "infer_batch_size"}
    assert backend.options.infer_batch_size == 8


def test_unusable_docs_never_outrank_usable_ones_in_raw_mode(backend):
    # "aaaaaaa" is longer than every doc: every usable raw score is negative
    docs = ["ab", None, "abc", "  "]
    scores = backend.score("aaaaaaa", docs, normalize=False)
    assert scores[0] == -5.0 and scores[2] == -4.0
    assert max(scores[1], scores[3]) < min(scores[0], scores[2])
    assert backend.rerank("aaaaaaa", docs, normalize=False) == [
        (2, -4.0),
        (0, -5.0),
        (1, UNUSABLE_LOGIT),
        (3, UNUSABLE_LOGIT),
    ]
    assert sigmoid(UNUSABLE_LOGIT) == 0.0


def test_unusable_docs_rank_last_even_when_a_usable_score_underflows_to_zero(backend):
    query = "q" * 2000  # logit -1999: P(yes) underflows to exactly 0.0, as an unusable doc
    docs = [None, "x", "", "xx"]
    scores = backend.score(query, docs)
    assert scores == [0.0, 0.0, 0.0, 0.0]
    assert [i for i, _ in backend.rerank(query, docs)] == [1, 3, 0, 2]
    assert rank_order(scores, docs) == [1, 3, 0, 2]


@pytest.mark.parametrize(
    "request_kwargs, param",
    [
        ({"query": "a\ud800b", "docs": ["x"]}, "query"),
        ({"query": "q", "docs": ["fine", None, "ok", "a\ud800b"]}, "docs[3]"),
        ({"query": "q", "docs": ["x"], "instruction": "rank \udcff"}, "instruction"),
        ({"query": "q", "docs": ["\ud83c\udf89 a surrogate pair is two code points"]}, "docs[0]"),
    ],
)
def test_text_that_is_not_valid_unicode_is_an_invalid_request(backend, request_kwargs, param):
    """A surrogate code point cannot be encoded as UTF-8 (tokenizers raise TypeError on it):
    the request is refused before it reaches the backend, naming the field."""
    from reranker.core.protocol import ScoreRequest

    with pytest.raises(InvalidRequest) as err:
        backend.score_with_meta(**request_kwargs)
    assert err.value.param == param and "surrogate" in str(err.value)
    assert str(err.value).encode("utf-8")  # the message itself is printable
    assert getattr(backend, "calls", 0) == 0

    # Sharing a call with innocent requests: only the bad one fails.
    good = ScoreRequest("q", ["aaa", "a"])
    bad = ScoreRequest(
        request_kwargs["query"], request_kwargs["docs"], True, request_kwargs.get("instruction")
    )
    results = backend.score_requests([good, bad, good])
    assert isinstance(results[1], InvalidRequest) and results[1].param == param
    alone = backend.score_with_meta("q", ["aaa", "a"])[0]
    assert results[0][0] == results[2][0] == alone


def test_valid_non_ascii_text_is_scored(backend):
    scores = backend.score("Ünïcödé 中文", ["emoji 🎉", "naïve", "\x00 NUL"], normalize=False)
    assert len(scores) == 3 and all(s != UNUSABLE_LOGIT for s in scores)


def test_a_model_without_instruction_refuses_one_and_reports_no_format():
    plain = PlainBackend({"model_name": "plain-model"})
    scores, meta = plain.score_with_meta("q", ["aa", "a"])
    assert scores == [sigmoid(2.0), sigmoid(1.0)]
    assert "instruction_format" not in meta  # the core names no model family's keys
    with pytest.raises(InvalidRequest) as exc:
        plain.score_with_meta("q", ["aa"], instruction="find facts")
    assert exc.value.param == "instruction"
    assert "plain-model takes no instruction" in str(exc.value)


def test_a_model_with_instruction_gets_its_default_and_its_format_meta(backend):
    seen = []
    original = backend._score_pairs

    def spy(query, docs, instruction, max_doc_tokens):
        seen.append(instruction)
        return original(query, docs, instruction, max_doc_tokens)

    backend._score_pairs = spy
    _, meta = backend.score_with_meta("q", ["a"])
    backend.score_with_meta("q", ["a"], instruction="mine")
    assert seen == ["fake instruction", "mine"]
    assert meta["instruction_format"] == "fake"
