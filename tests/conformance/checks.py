"""The contract every registered backend keeps, on every model family it serves: one
function per property, run on a loaded backend. ``CASES`` in the test modules pair a
backend with a model; a new engine or family is one line there."""

from __future__ import annotations

import math

import pytest

from reranker.core.chunking import ChunkingRequest, chunk_spans
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


def _chunk(**choices) -> ChunkingRequest:
    return ChunkingRequest(long_documents="chunk", chunk_tokens=48, return_chunks=True, **choices)


def chunking(backend) -> None:
    """long_documents: chunk scores every chunk of a long document: its score is the
    aggregate of its chunks scored as documents of their own; each reported span is the
    exact substring that was scored, spans cover the text; a short document scores as
    under truncate; the cap is counted; bad values are typed errors naming the field."""
    text = "  " + LONG  # leading whitespace: spans index the document as sent
    short = DOCS[0]
    scores, meta = backend.score_with_meta(
        QUERY, [text, short], normalize=False, chunking=_chunk(max_chunks_per_doc=1000)
    )
    best = meta["best_chunks"]
    assert meta["chunked_docs"] == 1 and meta["dropped_chunks"] == 0
    assert best[1] == {"index": 0, "start": 0, "end": len(short), "chunks": 1}
    assert scores[1] == pytest.approx(backend.score(QUERY, [short], normalize=False)[0], abs=TOL)
    offsets = backend.chunk_tokenizer().token_offsets([LONG])[0]
    spans = chunk_spans(LONG, offsets, 48, 6)
    assert meta["scored_chunks"] == len(spans) + 1 and best[0]["chunks"] == len(spans)
    covered = set()
    for span in spans:
        covered.update(range(span.start, span.end))
    assert all(c in covered for c, ch in enumerate(LONG) if not ch.isspace())
    alone = backend.score(QUERY, [LONG[s.start : s.end] for s in spans], normalize=False)
    assert scores[0] == pytest.approx(max(alone), abs=1e-5)
    winner = spans[best[0]["index"]]
    assert (best[0]["start"], best[0]["end"]) == (winner.start + 2, winner.end + 2)
    assert alone[best[0]["index"]] == pytest.approx(max(alone), abs=1e-5)
    mean = backend.score_with_meta(
        QUERY,
        [text],
        normalize=False,
        chunking=_chunk(chunk_aggregate="mean", max_chunks_per_doc=1000),
    )[0][0]
    assert mean == pytest.approx(sum(alone) / len(alone), abs=1e-5)
    capped, meta = backend.score_with_meta(
        QUERY,
        [text],
        normalize=False,
        chunking=_chunk(chunk_aggregate="first", max_chunks_per_doc=2),
    )
    assert capped[0] == pytest.approx(alone[0], abs=1e-5)
    assert (meta["scored_chunks"], meta["dropped_chunks"]) == (2, len(spans) - 2)
    for bad, param in [
        (ChunkingRequest(long_documents="chunk", chunk_tokens=8, chunk_overlap=8), "chunk_overlap"),
        (ChunkingRequest(long_documents="chunk", chunk_tokens=10**6), "chunk_tokens"),
        (ChunkingRequest(long_documents="sometimes"), "long_documents"),
        (ChunkingRequest(long_documents="chunk", chunk_aggregate="median"), "chunk_aggregate"),
        (ChunkingRequest(long_documents="chunk", max_chunks_per_doc=0), "max_chunks_per_doc"),
    ]:  # fmt: skip
        with pytest.raises(InvalidRequest) as exc:
            backend.score_with_meta(QUERY, [text], chunking=bad)
        assert exc.value.param == param


CHECKS = [cleaning, dedup, order, normalisation, truncation, chunking, instructions, errors]
