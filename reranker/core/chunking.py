"""Long documents scored in chunks: every part of a document, not only its head.

Under ``long_documents: chunk`` a document longer than ``chunk_tokens`` tokens is cut
into chunks of at most that many tokens, ``chunk_overlap`` tokens shared by neighbours,
at token boundaries of the backend's own tokenizer (a chunk is the exact substring of the
document from its first token's first character to its last token's last one). Each
chunk is scored against the query as a document of its own, and the document's score is
an aggregate of its chunks' relevance logits:

- ``max`` (default): the best chunk's, the MaxP of passage-level ranking;
- ``mean``: the mean over the document's scored chunks;
- ``first``: the first chunk's (what truncation scores, with the chunk's length).

At most ``max_chunks_per_doc`` chunks of a document are scored, from its start; the rest
is counted in meta (``dropped_chunks``), never silently. Under ``truncate`` (default) a
document is cut to the room its prompt leaves, as always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from reranker.core.errors import InvalidRequest

LongDocuments = Literal["truncate", "chunk"]
Aggregate = Literal["max", "mean", "first"]
AGGREGATES: tuple[Aggregate, ...] = ("max", "mean", "first")


class TokenOffsets(Protocol):
    """What chunking needs of a backend's tokenizer: each token's character span."""

    def token_offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """``(start, end)`` character offsets of each token of each text, in order."""
        ...


@dataclass(frozen=True)
class Chunking:
    """How documents longer than a chunk are scored (see the module docstring)."""

    mode: LongDocuments = "truncate"
    chunk_tokens: int = 512
    chunk_overlap: int = 64
    aggregate: Aggregate = "max"
    max_chunks_per_doc: int = 32
    return_chunks: bool = False

    def check(self, max_model_len: int) -> Chunking:
        """This, or :class:`InvalidRequest` naming the first value that cannot work."""
        if self.mode not in ("truncate", "chunk"):
            raise InvalidRequest(
                "long_documents must be 'truncate' or 'chunk'", param="long_documents"
            )
        if not 1 <= self.chunk_tokens <= max_model_len:
            raise InvalidRequest(
                f"chunk_tokens must be between 1 and the model's max_model_len ({max_model_len})",
                param="chunk_tokens",
            )
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise InvalidRequest(
                "chunk_overlap must be >= 0 and smaller than chunk_tokens",
                param="chunk_overlap",
            )
        if self.aggregate not in AGGREGATES:
            raise InvalidRequest(
                f"chunk_aggregate must be one of {', '.join(AGGREGATES)}", param="chunk_aggregate"
            )
        if self.max_chunks_per_doc < 1:
            raise InvalidRequest("max_chunks_per_doc must be >= 1", param="max_chunks_per_doc")
        return self


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a document: its number and its characters ``text[start:end]``."""

    index: int
    start: int
    end: int


def chunk_spans(
    text: str, offsets: Sequence[tuple[int, int]], chunk_tokens: int, overlap: int
) -> list[ChunkSpan]:
    """The chunks of ``text`` whose tokens have ``offsets``: windows of ``chunk_tokens``
    tokens, each starting ``chunk_tokens - overlap`` tokens after the one before, the
    last ending at the last token. Whitespace at a chunk's edges is left out of it. A
    text of at most ``chunk_tokens`` tokens is one chunk: the whole text."""
    if len(offsets) <= chunk_tokens:
        return [ChunkSpan(0, 0, len(text))]
    stride = chunk_tokens - overlap
    spans: list[ChunkSpan] = []
    first = 0
    while True:
        last = min(first + chunk_tokens, len(offsets)) - 1
        start, end = offsets[first][0], offsets[last][1]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append(ChunkSpan(len(spans), start, end))
        if last == len(offsets) - 1:
            return spans or [ChunkSpan(0, 0, len(text))]
        first += stride


def aggregate(logits: Sequence[float], how: Aggregate) -> tuple[float, int]:
    """A document's relevance logit from its chunks' (in chunk order), and the index of
    the chunk that decided it (for ``mean``: the best chunk)."""
    best = max(range(len(logits)), key=logits.__getitem__)
    if how == "max":
        return logits[best], best
    if how == "mean":
        return sum(logits) / len(logits), best
    return logits[0], 0


@dataclass(frozen=True)
class ChunkingRequest:
    """A request's chunking choices (the API's field names); None keeps the backend's."""

    long_documents: LongDocuments | None = None
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    chunk_aggregate: Aggregate | None = None
    max_chunks_per_doc: int | None = None
    return_chunks: bool = False

    def over(self, default: Chunking, overlap_configured: bool, max_model_len: int) -> Chunking:
        """``default`` with this request's choices, checked. A request that sets
        ``chunk_tokens`` alone gets an eighth of it as overlap, unless the backend's
        configuration fixes the overlap."""
        tokens = self.chunk_tokens if self.chunk_tokens is not None else default.chunk_tokens
        if self.chunk_overlap is not None:
            overlap = self.chunk_overlap
        elif self.chunk_tokens is not None and not overlap_configured:
            overlap = tokens // 8
        else:
            overlap = default.chunk_overlap
        return Chunking(
            default.mode if self.long_documents is None else self.long_documents,
            tokens,
            overlap,
            default.aggregate if self.chunk_aggregate is None else self.chunk_aggregate,
            default.max_chunks_per_doc
            if self.max_chunks_per_doc is None
            else self.max_chunks_per_doc,
            self.return_chunks,
        ).check(max_model_len)
