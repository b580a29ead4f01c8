"""long_documents: chunk on the real tiny Qwen3 reranker: a passage planted after token
4,096 of a long document decides its score under chunk and is invisible under truncate;
chunking is the aggregate of scoring the chunks as documents of their own."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from reranker.core.chunking import ChunkingRequest, chunk_spans  # noqa: E402
from reranker.core.registry import load_backend  # noqa: E402

QUERY = "What is the capital of France?"
FILLER = "The weather report mentions clouds and light wind over the hills. "
CANDIDATES = [
    "Paris is the capital of France, famous for the Eiffel Tower.",
    "What is the capital of France? The capital of France is Paris.",
    "France: capital Paris. Paris, France. The capital city is Paris.",
    "Capital of France? Paris.",
    "The French government sits in Paris, the capital and largest city of France.",
    "Q: What is the capital of France? A: Paris.",
    "Paris. Paris. Paris. Paris. Paris. Paris. Paris. Paris.",
    "capital capital capital France France France",
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    loaded = load_backend("qwen3_transformers", {"model_name": str(tiny_model_dir)})
    yield loaded
    loaded.close()


def test_a_passage_after_token_4096_decides_the_score_only_under_chunk(backend):
    filler = FILLER * 400  # ~5,200 tokens of the Qwen3 tokenizer
    offsets = backend.chunk_tokenizer().token_offsets([filler])[0]
    assert len(offsets) > 4096
    only_filler = backend.score(QUERY, [filler], normalize=False)[0]
    chunk = ChunkingRequest(long_documents="chunk", return_chunks=True)
    # The random tiny model has no notion of relevance: plant a passage (one sentence
    # repeated over more than a chunk) of candidates until one outscores every filler
    # chunk. Only chunking that scores past the head can see it.
    for sentence in CANDIDATES:
        planted = (sentence + " ") * 80
        doc = filler + planted + FILLER * 20
        at = len(filler)
        chunked, meta = backend.score_with_meta(QUERY, [doc], normalize=False, chunking=chunk)
        best = meta["best_chunks"][0]
        if at <= best["start"] and best["end"] <= at + len(planted):
            break
    else:
        pytest.fail("no planted passage decided a chunked score")
    assert chunked[0] > only_filler + 1e-4
    assert meta["chunked_docs"] == 1 and meta["scored_chunks"] == best["chunks"] > 8
    assert meta["truncated_docs"] == 0  # 512-token chunks fit the prompt whole
    # ... and equals that chunk scored as a document of its own.
    alone = backend.score(QUERY, [doc[best["start"] : best["end"]]], normalize=False)[0]
    assert chunked[0] == pytest.approx(alone, abs=1e-5)

    truncated, meta = backend.score_with_meta(QUERY, [doc], normalize=False)
    assert meta["truncated_docs"] == 1 and "chunked_docs" not in meta
    assert truncated[0] == pytest.approx(only_filler, abs=1e-5)  # the head: filler only
    assert chunked[0] > truncated[0] + 1e-4


def test_chunks_are_exact_substrings_at_token_boundaries(backend):
    text = "Ünïcode façade — naïve café. 東京は日本の首都です。🙂 " * 60
    offsets = backend.chunk_tokenizer().token_offsets([text])[0]
    spans = chunk_spans(text, offsets, 40, 8)
    assert len(spans) > 3
    token_starts = {start for start, _ in offsets}
    token_ends = {end for _, end in offsets}
    for span in spans:
        piece = text[span.start : span.end]
        assert piece == piece.strip() and piece
        # A chunk starts where a token starts and ends where one ends (edges' spaces aside).
        assert span.start in token_starts or text[span.start - 1].isspace()
        assert span.end in token_ends or text[span.end].isspace()
    covered = {c for s in spans for c in range(s.start, s.end)}
    assert all(c in covered for c, ch in enumerate(text) if not ch.isspace())
