"""The reranking protocol and the base class every backend extends.

A backend implements :meth:`RerankBackend._score_pairs`: raw ``logit(yes) - logit(no)``
for already cleaned, deduplicated documents. The base class does the rest, once for all
backends: input cleaning, dedup, normalisation, scattering back to input order, meta.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from reranker.dedup import deduplicate_with_positions
from reranker.errors import InvalidRequest
from reranker.options import BackendOptions


@dataclass(frozen=True)
class PairScores:
    """What a backend returns for one query and its unique documents."""

    logits: list[float]  # logit(yes) - logit(no), one per document
    batches: int  # forward batches (engine calls) used
    tokens: int  # prompt tokens scored, padding excluded
    truncated_docs: int = 0


def sigmoid(x: float) -> float:
    """P(yes) from logit(yes) - logit(no), without overflow at either end."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _as_text(doc: Any) -> str | None:
    """A document as stripped text, or None when it cannot be scored."""
    if doc is None:
        return None
    if isinstance(doc, bytes | bytearray):
        try:
            text = bytes(doc).decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif isinstance(doc, str):
        text = doc
    else:
        try:
            text = str(doc)
        except Exception:
            return None
    text = text.strip()
    return text or None


class RerankBackend(ABC):
    """Scores how relevant each document is to a query.

    Class attributes describe a backend before it is built: ``name`` (its entry-point
    name), ``requires`` (modules it imports, probed with ``find_spec`` by the registry),
    ``needs_gpu``, ``Options`` (its pydantic options model) and ``env_prefix`` (option
    ``x`` is overridden by the environment variable ``<env_prefix>X``).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    needs_gpu: ClassVar[bool] = False
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    env_prefix: ClassVar[str] = "RERANK_"
    env_aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, options: BackendOptions | Mapping[str, Any] | None = None) -> None:
        if isinstance(options, BackendOptions):
            self.options = self.Options.model_validate(options.model_dump())
        else:
            self.options = self.Options.model_validate(dict(options or {}))
        self.template = self.options.prompt_template()

    @property
    def model_name(self) -> str:
        """The model this backend serves (hub id or path)."""
        return self.options.model_name

    @abstractmethod
    def _score_pairs(
        self, query: str, docs: list[str], instruction: str, max_doc_tokens: int | None
    ) -> PairScores:
        """Raw logit(yes) - logit(no) for each doc; docs are non-empty and unique."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model. Backends holding a model or engine override this."""

    def __enter__(self) -> RerankBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta_extra(self) -> dict[str, Any]:
        """Backend-specific meta keys added to every response."""
        return {}

    def score_with_meta(
        self,
        query: Any,
        docs: Sequence[Any] | None,
        normalize: bool = True,
        *,
        instruction: str | None = None,
        max_doc_tokens: int | None = None,
    ) -> tuple[list[float], dict[str, Any]]:
        """One score per input doc, in input order, and a meta dict.

        ``normalize=True`` gives P(yes) in [0, 1]; ``False`` the raw logit(yes) - logit(no).
        None, blank or unconvertible docs score 0.0; a blank query scores every doc 0.0.
        """
        start = time.perf_counter()
        if isinstance(docs, str | bytes) or (docs is not None and not isinstance(docs, Sequence)):
            raise InvalidRequest("docs must be a list of strings", param="docs")
        if instruction is not None and not str(instruction).strip():
            raise InvalidRequest("instruction must not be blank", param="instruction")
        if max_doc_tokens is not None and max_doc_tokens < 1:
            raise InvalidRequest("max_doc_tokens must be >= 1", param="max_doc_tokens")
        docs = list(docs or [])
        query_text = _as_text(query) or ""
        usable = [(i, t) for i, t in ((i, _as_text(d)) for i, d in enumerate(docs)) if t]
        scores = [0.0] * len(docs)
        unique: list[str] = []
        result = PairScores(logits=[], batches=0, tokens=0)
        if query_text and usable:
            unique, position_to_unique = deduplicate_with_positions([t for _, t in usable])
            result = self._score_pairs(
                query_text, unique, instruction or self.options.instruction, max_doc_tokens
            )
            if len(result.logits) != len(unique):
                raise RuntimeError(
                    f"{self.name}: got {len(result.logits)} scores for {len(unique)} documents"
                )
            values = [sigmoid(x) for x in result.logits] if normalize else result.logits
            for (i, _), u in zip(usable, position_to_unique, strict=True):
                scores[i] = float(values[u])
        meta = {
            "input_docs": len(docs),
            "usable_docs": len(usable),
            "unique_docs": len(unique),
            "dedup_ratio": round(1.0 - len(unique) / len(usable), 4) if unique else 0.0,
            "elapsed_ms": round((time.perf_counter() - start) * 1000.0, 3),
            "model": self.model_name,
            "backend": self.name,
            "normalize": normalize,
            "inference_batches": result.batches,
            "infer_batch_size": self.options.infer_batch_size,
            "max_batch_tokens": self.options.max_batch_tokens,
            "sort_by_doc_length": self.options.sort_by_doc_length,
            "instruction_format": self.options.instruction_format,
            "max_model_len": self.options.max_model_len,
            "scored_tokens": result.tokens,
            "truncated_docs": result.truncated_docs,
            **self.meta_extra(),
        }
        return scores, meta

    def score(self, query: Any, docs: Sequence[Any], normalize: bool = True) -> list[float]:
        """Scores only (see :meth:`score_with_meta`)."""
        return self.score_with_meta(query, docs, normalize)[0]

    def rerank(
        self, query: Any, docs: Sequence[Any], top_n: int | None = None, normalize: bool = True
    ) -> list[tuple[int, float]]:
        """``(index, score)`` pairs, best first (ties keep input order), at most ``top_n``."""
        if top_n is not None and top_n < 1:
            raise InvalidRequest("top_n must be >= 1", param="top_n")
        scores = self.score(query, docs, normalize)
        ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])
        return ranked if top_n is None else ranked[:top_n]
