"""The contract every registered backend keeps, on every model family it serves: one
function per property, run on a loaded backend. ``CASES`` in the test modules pair a
backend with a model; a new engine or family is one line there."""

from __future__ import annotations

import math

import pytest

from reranker.core.errors import InvalidRequest
from reranker.core.protocol import UNUSABLE_LOGIT, ScoreRequest, rank_order, sigmoid

QUERY = "how do vaccines train the immune system"
DOCS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen.",
    "Bananas are rich in potassium and are usually yellow when ripe.",
    "Memory cells remember the pathogen after vaccination.",
]
LONG = " ".join(f"Section {i}: antibodies form after exposure to an antigen." for i in range(400))
TOL = 1e-4


def cleaning(backend) -> None:
    """None, blank and whitespace documents score 0.0 (raw: UNUSABLE_LOGIT) in place; a
    blank query scores every document so; meta counts them."""
    docs = [DOCS[0], None, "", "  \n", DOCS[1]]
    scores, meta = backend.score_with_meta(QUERY, docs)
    assert scores[1:4] == [0.0, 0.0, 0.0] and 0.0 < scores[0] < 1.0
    assert (meta["input_docs"], meta["usable_docs"]) == (5, 2)
    raw = backend.score(QUERY, docs, normalize=False)
    assert raw[1:4] == [UNUSABLE_LOGIT] * 3
    assert backend.score("   ", DOCS) == [0.0] * len(DOCS)
    assert backend.score_with_meta(QUERY, [])[0] == []


def dedup(backend) -> None:
    """Duplicates are scored once and get the same score."""
    scores, meta = backend.score_with_meta(QUERY, [DOCS[0], DOCS[1], DOCS[0]])
    assert scores[0] == scores[2]
    assert meta["unique_docs"] == 2 and meta["dedup_ratio"] == pytest.approx(1 / 3, abs=1e-3)


def order(backend) -> None:
    """Scores come back in input order: each equals the document scored alone."""
    together = backend.score(QUERY, DOCS, normalize=False)
    alone = [backend.score(QUERY, [d], normalize=False)[0] for d in DOCS]
    assert together == pytest.approx(alone, abs=TOL)
    ranked = [i for i, _ in backend.rerank(QUERY, [*DOCS, None])]
    assert ranked == rank_order(backend.score(QUERY, [*DOCS, None]), [*DOCS, None])
    assert ranked[-1] == len(DOCS)  # the unusable document last


def normalisation(backend) -> None:
    """normalize=True is the sigmoid of the raw score, in [0, 1]."""
    raw = backend.score(QUERY, DOCS, normalize=False)
    probs = backend.score(QUERY, DOCS)
    assert probs == pytest.approx([sigmoid(x) for x in raw], abs=1e-5)
    assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in probs)


def truncation(backend) -> None:
    """A document longer than max_model_len is cut (counted in meta), still scored; a
    per-request max_doc_tokens cuts further."""
    scores, meta = backend.score_with_meta(QUERY, [LONG, DOCS[0]])
    assert meta["truncated_docs"] == 1 and 0.0 < scores[0] < 1.0
    _, meta = backend.score_with_meta(QUERY, [DOCS[0]], max_doc_tokens=3)
    assert meta["truncated_docs"] == 1


def instructions(backend) -> None:
    """A model that reads an instruction uses it (and its default without one); a model
    that reads none refuses one, never ignores it."""
    if backend.takes_instruction:
        default = backend.score(QUERY, DOCS, normalize=False)
        other = backend.score_with_meta(
            QUERY, DOCS, normalize=False, instruction="Judge the text's language only"
        )[0]
        assert other != pytest.approx(default, abs=1e-6)
        assert backend.default_instruction()
    else:
        with pytest.raises(InvalidRequest) as exc:
            backend.score_with_meta(QUERY, DOCS, instruction="anything")
        assert exc.value.param == "instruction"


def errors(backend) -> None:
    """Input that cannot be scored is a typed error naming the field."""
    with pytest.raises(InvalidRequest) as exc:
        backend.score_with_meta(QUERY, ["fine", "bad \ud800 text"])
    assert exc.value.param == "docs[1]"
    with pytest.raises(InvalidRequest):
        backend.score_with_meta(QUERY, "a string, not a list")
    with pytest.raises(InvalidRequest):
        backend.score_with_meta(QUERY, DOCS, max_doc_tokens=0)
    # One bad request among several fails alone.
    results = backend.score_requests([ScoreRequest(QUERY, DOCS), ScoreRequest("bad \ud800", DOCS)])
    assert isinstance(results[1], InvalidRequest) and not isinstance(results[0], Exception)


CHECKS = [cleaning, dedup, order, normalisation, truncation, instructions, errors]
