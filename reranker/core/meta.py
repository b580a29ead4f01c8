"""What a scoring call reports besides its scores: :class:`ScoreMeta`.

A typed, immutable record of the fields every backend reports, plus two open maps: the
pair format's keys (e.g. the Qwen3 prompt's ``instruction_format``) and the engine's
(device, dtype, kernels in force). It reads like the JSON object it becomes
(``meta["scored_tokens"]``, ``dict(meta)``), so code written against the former plain
dict keeps working; :meth:`ScoreMeta.to_dict` gives that object, keys in their
documented order (docs/api.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Counts that add up when one request is scored in pieces.
SUMMED_FIELDS = (
    "input_docs",
    "usable_docs",
    "unique_docs",
    "inference_batches",
    "scored_tokens",
    "truncated_docs",
)


CHUNK_COUNTS = ("chunked_docs", "scored_chunks", "dropped_chunks")


@dataclass(frozen=True, eq=False)  # eq from Mapping: equal to a dict of the same items
class ScoreMeta(Mapping[str, Any]):
    """Meta of one request's scores (see ``RerankBackend.score_with_meta``)."""

    input_docs: int
    usable_docs: int
    unique_docs: int
    dedup_ratio: float
    elapsed_ms: float
    model: str
    backend: str
    normalize: bool
    inference_batches: int
    infer_batch_size: int
    max_batch_tokens: int | None
    sort_by_doc_length: bool
    max_model_len: int
    scored_tokens: int
    truncated_docs: int
    format_keys: Mapping[str, Any] = field(default_factory=dict)
    engine_keys: Mapping[str, Any] = field(default_factory=dict)
    # Under long_documents: chunk (reranker.core.chunking), else None and left out.
    chunked_docs: int | None = None
    scored_chunks: int | None = None
    dropped_chunks: int | None = None
    # Per input document, with return_chunks: the chunk that decided its score.
    best_chunks: tuple[dict[str, int] | None, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this meta: the common fields, the format's keys after
        ``sort_by_doc_length``, the chunk counts where documents were chunked, the
        engine's keys last."""
        return {
            "input_docs": self.input_docs,
            "usable_docs": self.usable_docs,
            "unique_docs": self.unique_docs,
            "dedup_ratio": self.dedup_ratio,
            "elapsed_ms": self.elapsed_ms,
            "model": self.model,
            "backend": self.backend,
            "normalize": self.normalize,
            "inference_batches": self.inference_batches,
            "infer_batch_size": self.infer_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "sort_by_doc_length": self.sort_by_doc_length,
            **self.format_keys,
            "max_model_len": self.max_model_len,
            "scored_tokens": self.scored_tokens,
            "truncated_docs": self.truncated_docs,
            **{name: value for name, value in self._chunk_items() if value is not None},
            **self.engine_keys,
        }

    def _chunk_items(self) -> tuple[tuple[str, Any], ...]:
        best = None if self.best_chunks is None else list(self.best_chunks)
        return (
            ("chunked_docs", self.chunked_docs),
            ("scored_chunks", self.scored_chunks),
            ("dropped_chunks", self.dropped_chunks),
            ("best_chunks", best),
        )

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    @staticmethod
    def dedup_ratio_of(unique: int, usable: int) -> float:
        """The share of usable documents that were duplicates, rounded to 4 places."""
        return round(1.0 - unique / usable, 4) if unique else 0.0


def merge_pieces(
    metas: Sequence[ScoreMeta], positions: Sequence[Sequence[int]], input_docs: int
) -> ScoreMeta:
    """The meta of one request scored in pieces (piece ``k`` held the documents at
    ``positions[k]``): counts and time summed, per-document entries put back in place,
    the dedup ratio of the sums, everything else as the first piece reported it."""
    first = metas[0]
    sums: dict[str, Any] = {name: sum(getattr(m, name) for m in metas) for name in SUMMED_FIELDS}
    for name in CHUNK_COUNTS:
        if getattr(first, name) is not None:
            sums[name] = sum(getattr(m, name) or 0 for m in metas)
    scored = sums.get("scored_chunks") or sums["usable_docs"]
    if first.best_chunks is not None:
        best: list[dict[str, int] | None] = [None] * input_docs
        for meta, where in zip(metas, positions, strict=True):
            for position, chunk in zip(where, meta.best_chunks or (), strict=True):
                best[position] = chunk
        sums["best_chunks"] = tuple(best)
    return dataclasses.replace(
        first,
        **sums,
        elapsed_ms=round(sum(m.elapsed_ms for m in metas), 3),
        dedup_ratio=ScoreMeta.dedup_ratio_of(sums["unique_docs"], scored),
    )
