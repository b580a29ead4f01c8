"""The reranking protocol and the base class every backend extends.

A backend implements :meth:`RerankBackend._score_pairs` (one query) or
:meth:`RerankBackend._score_jobs` (several queries sharing batches): one raw relevance
logit per already cleaned, deduplicated document (its sigmoid is the probability that
the document is relevant). The base class does the rest, once for all backends and model
families: input cleaning, instruction handling, dedup, normalisation, scattering back to
input order, meta. A backend whose device runs asynchronously also implements
:meth:`RerankBackend._start_jobs` (queue the work, return how to collect it), so that a
caller can prepare its next call while the device runs this one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reranker.core.chunking import (
    Chunking,
    ChunkingRequest,
    ChunkSpan,
    TokenOffsets,
    aggregate,
    chunk_spans,
)
from reranker.core.dedup import deduplicate_with_positions
from reranker.core.errors import InvalidRequest
from reranker.core.meta import ScoreMeta
from reranker.core.options import BackendOptions


@dataclass(frozen=True)
class PairScores:
    """What a backend returns for one query and its unique documents."""

    logits: list[float]  # the relevance logit of each document (sigmoid: its probability)
    batches: int  # forward batches (engine calls) used
    tokens: int  # prompt tokens scored, padding excluded
    truncated_docs: int = 0


@dataclass(frozen=True)
class ScoreRequest:
    """One call of the protocol: a query and its documents (see ``score_with_meta``)."""

    query: Any
    docs: Sequence[Any] | None
    normalize: bool = True
    instruction: str | None = None
    max_doc_tokens: int | None = None
    chunking: ChunkingRequest | None = None  # None: the backend's long_documents options


@dataclass(frozen=True)
class ScoreJob:
    """What a backend scores: a cleaned query and its unique, non-blank documents."""

    query: str
    docs: list[str]
    instruction: str | None  # None: the model takes no instruction
    max_doc_tokens: int | None = None


Outcome = tuple[list[float], ScoreMeta] | InvalidRequest
"""One request's result: ``(scores, meta)``, or the input error it alone raised."""


@dataclass
class _Prepared:
    request: ScoreRequest
    input_docs: int
    usable: list[tuple[int, str]]
    chunking: Chunking
    # What is scored: each usable document whole, or (chunking) each of its chunks.
    spans: list[list[ChunkSpan]] = field(default_factory=list)  # per usable document
    dropped_chunks: int = 0
    unique: list[str] = field(default_factory=list)
    position_to_unique: list[int] = field(default_factory=list)  # per scored text
    job: ScoreJob | None = None
    result: PairScores | InvalidRequest | None = None


# The raw score of a document that cannot be scored (None, blank, unconvertible, or a blank
# query): the lowest finite float, below any relevance logit a model can produce, so
# an unusable document never outranks a usable one when raw scores are sorted. Its
# normalised counterpart is 0.0, which is sigmoid(UNUSABLE_LOGIT).
UNUSABLE_LOGIT = -sys.float_info.max


def sigmoid(x: float) -> float:
    """The probability of a relevance logit, without overflow at either end."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def document_text(doc: Any) -> str | None:
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


def invalid_unicode(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8, or None when it can. Only a surrogate code
    point (a lone ``"\\ud800"`` JSON escape, a ``surrogateescape`` decode) makes a Python
    string unencodable; tokenizers refuse such text."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"it holds a surrogate code point (U+{ord(text[exc.start]):04X}), which cannot be "
            "encoded as UTF-8"
        )
    return None


def check_text(text: str, param: str) -> None:
    """Raise :class:`InvalidRequest` naming ``param`` when ``text`` is not valid Unicode
    (:func:`invalid_unicode`). Such text is refused, never scored: replacing what cannot
    be encoded would score text the client did not send."""
    why = invalid_unicode(text)
    if why is not None:
        raise InvalidRequest(f"{param} is not valid Unicode text: {why}", param=param)


def _leading_whitespace(docs: Sequence[Any] | None, i: int, text: str) -> int:
    """Characters ``document_text`` stripped from the start of ``docs[i]`` (a str), so
    chunk spans index the document as sent."""
    doc = docs[i] if docs is not None else None
    return len(doc) - len(doc.lstrip()) if isinstance(doc, str) else 0


def rank_order(scores: Sequence[float], docs: Sequence[Any]) -> list[int]:
    """Indices of ``docs`` best first: usable documents by score, then the unusable ones;
    ties keep input order. An unusable document never outranks a usable one, whatever the
    scores (raw or normalised, underflow included)."""
    return sorted(range(len(scores)), key=lambda i: (document_text(docs[i]) is None, -scores[i], i))


class RerankBackend:
    """Scores how relevant each document is to a query.

    Class attributes describe a backend before it is built: ``name`` (its entry-point
    name), ``requires`` (modules it imports, probed with ``find_spec`` by the registry),
    ``Options`` (its pydantic options model) and ``env_prefix`` (option
    ``x`` is overridden by the environment variable ``<env_prefix>X``).

    ``takes_instruction``: whether its model reads a per-request instruction; a request
    with one sent to a backend whose model takes none is refused, never scored without it.
    A class default, which a backend whose model family is read from the checkpoint sets
    per instance once it knows the family.

    ``overlaps_calls``: whether :meth:`start_requests` returns while the device still runs
    the call (the backend implements :meth:`_start_jobs`), so that a caller can prepare
    the next call meanwhile; the service's scheduler then keeps one call queued ahead.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    env_prefix: ClassVar[str] = "RERANK_"
    env_aliases: ClassVar[dict[str, str]] = {}
    takes_instruction: bool = False
    overlaps_calls: bool = False
    _collected_at: float = 0.0  # when the last call's results were collected
    _text_tokenizer: TokenOffsets | None = None

    def __init__(self, options: BackendOptions | Mapping[str, Any] | None = None) -> None:
        if isinstance(options, BackendOptions):
            # exclude_unset: a backend may pick its own default for what the user left unset
            self.options = self.Options.model_validate(options.model_dump(exclude_unset=True))
        else:
            self.options = self.Options.model_validate(dict(options or {}))

    @property
    def model_name(self) -> str:
        """The model this backend serves (hub id or path)."""
        return self.options.model_name

    def default_instruction(self) -> str | None:
        """The instruction of a request that names none (None: the model takes none)."""
        return None

    def format_meta(self) -> dict[str, Any]:
        """Meta keys of the model family's pair format (e.g. its instruction format)."""
        return {}

    def _score_pairs(
        self, query: str, docs: list[str], instruction: str | None, max_doc_tokens: int | None
    ) -> PairScores:
        """The raw relevance logit of each doc; docs are non-empty and unique.

        Implement this, or :meth:`_score_jobs` to share batches across requests.
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither scoring hook")

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        """Score several queries' documents at once; one result (or input error) per job.

        The default scores job by job; backends override it to put the documents of all
        jobs into shared batches or engine calls.
        """
        results: list[PairScores | InvalidRequest] = []
        for job in jobs:
            try:
                results.append(
                    self._score_pairs(job.query, job.docs, job.instruction, job.max_doc_tokens)
                )
            except InvalidRequest as exc:
                results.append(exc)
        return results

    def _start_jobs(self, jobs: list[ScoreJob]) -> Callable[[], list[PairScores | InvalidRequest]]:
        """Start scoring ``jobs``; returns a function that waits for :meth:`_score_jobs`'
        results. The default scores them now; a backend whose device runs asynchronously
        (``overlaps_calls``) returns once the work is queued on the device."""
        results = self._score_jobs(jobs)
        return lambda: results

    @classmethod
    def check_model(cls, options: BackendOptions) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~reranker.core.errors.ModelUnavailable` at once, before anything heavy is
        imported, when the model ``options`` name cannot be found. Backends that load
        weights override this; the registry and the service call it first."""

    def health(self) -> str | None:
        """None while this backend can score, else why not (its engine died, ...).

        The service polls it every few seconds (``health_interval_s``) and after a failed
        scoring call, from a thread other than the one scoring: it must be cheap and must
        not wait for a running call. Backends whose engine can die override it.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model. Backends holding a model or engine override this."""

    def __enter__(self) -> RerankBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta_extra(self) -> dict[str, Any]:
        """Backend-specific meta keys added to every response."""
        return {}

    def chunk_tokenizer(self) -> TokenOffsets | None:
        """The tokenizer whose token boundaries cut documents into chunks
        (``long_documents: chunk``): ``_text_tokenizer``, which a backend that tokenises
        sets to its tokenizer of user text; None where the backend cannot chunk."""
        return self._text_tokenizer

    def score_with_meta(
        self,
        query: Any,
        docs: Sequence[Any] | None,
        normalize: bool = True,
        *,
        instruction: str | None = None,
        max_doc_tokens: int | None = None,
        chunking: ChunkingRequest | None = None,
    ) -> tuple[list[float], ScoreMeta]:
        """One score per input doc, in input order, and the call's :class:`ScoreMeta`.

        ``normalize=True`` gives the probability of relevance in [0, 1]; ``False`` the raw
        relevance logit (for the Qwen3 reranker, logit(yes) - logit(no)).
        None, blank or unconvertible docs score 0.0 (``UNUSABLE_LOGIT``, the lowest finite
        float, when ``normalize=False``); a blank query scores every doc so.
        Raises :class:`InvalidRequest` for input that cannot be scored, e.g. a query,
        instruction or document holding a surrogate code point (``check_text``).
        ``chunking`` overrides the backend's ``long_documents`` options for this call
        (:mod:`reranker.core.chunking`).
        """
        request = ScoreRequest(query, docs, normalize, instruction, max_doc_tokens, chunking)
        result = self.score_requests([request])[0]
        if isinstance(result, InvalidRequest):
            raise result
        return result

    def score_requests(self, requests: Sequence[ScoreRequest]) -> list[Outcome]:
        """Score several requests together (their documents share batches).

        Each request gets ``(scores, meta)`` as from :meth:`score_with_meta`, or the
        :class:`InvalidRequest` its own input raised; one bad request never fails another.
        """
        return self.start_requests(requests)()

    def start_requests(self, requests: Sequence[ScoreRequest]) -> Callable[[], list[Outcome]]:
        """:meth:`score_requests` in two steps: this call checks the input and starts the
        scoring; the function it returns waits for the results and returns them. Where
        ``overlaps_calls`` is true, this returns while the device runs the call; an error
        of the device can then surface from either step."""
        start = time.perf_counter()
        prepared: list[_Prepared | InvalidRequest] = []
        for request in requests:
            try:
                prepared.append(self._prepare(request))
            except InvalidRequest as exc:
                prepared.append(exc)
        to_score = [p for p in prepared if isinstance(p, _Prepared) and p.job is not None]
        jobs = [p.job for p in to_score if p.job is not None]
        no_jobs: Callable[[], list[PairScores | InvalidRequest]] = list
        collect_jobs = self._start_jobs(jobs) if jobs else no_jobs

        def collect() -> list[Outcome]:
            results = collect_jobs()
            if len(results) != len(to_score):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(to_score)} jobs")
            for p, result in zip(to_score, results, strict=True):
                p.result = result
            # the backend's time on this call: from its start, or from the end of the
            # call it was queued behind (started while that one ran, or waiting for it)
            end = time.perf_counter()
            elapsed_ms = round((end - max(start, self._collected_at)) * 1000.0, 3)
            self._collected_at = end
            return [
                p if isinstance(p, InvalidRequest) else self._finish(p, elapsed_ms)
                for p in prepared
            ]

        return collect

    def _prepare(self, request: ScoreRequest) -> _Prepared:
        docs = request.docs
        if isinstance(docs, str | bytes) or (docs is not None and not isinstance(docs, Sequence)):
            raise InvalidRequest("docs must be a list of strings", param="docs")
        instruction = request.instruction
        if instruction is not None and not self.takes_instruction:
            raise InvalidRequest(
                f"the model {self.model_name} takes no instruction; send the request without one",
                param="instruction",
            )
        if instruction is not None and not str(instruction).strip():
            raise InvalidRequest("instruction must not be blank", param="instruction")
        if request.max_doc_tokens is not None and request.max_doc_tokens < 1:
            raise InvalidRequest("max_doc_tokens must be >= 1", param="max_doc_tokens")
        if instruction is not None:
            check_text(str(instruction), "instruction")
        docs = list(docs or [])
        query_text = document_text(request.query) or ""
        check_text(query_text, "query")
        usable = [(i, t) for i, t in ((i, document_text(d)) for i, d in enumerate(docs)) if t]
        for i, text in usable:
            check_text(text, f"docs[{i}]")
        prepared = _Prepared(request, len(docs), usable, self.resolve_chunking(request))
        if query_text and usable:
            texts = self._split(prepared)
            prepared.unique, prepared.position_to_unique = deduplicate_with_positions(texts)
            prepared.job = ScoreJob(
                query_text,
                prepared.unique,
                str(instruction) if instruction else self.default_instruction(),
                request.max_doc_tokens,
            )
        return prepared

    def resolve_chunking(self, request: ScoreRequest) -> Chunking:
        """How ``request``'s long documents are scored: its choices over this backend's
        options; :class:`InvalidRequest` names a value that cannot work."""
        default = self.options.default_chunking()
        if request.chunking is None:
            return default
        overlap_configured = self.options.chunk_overlap is not None
        return request.chunking.over(default, overlap_configured, self.options.max_model_len)

    def _split(self, p: _Prepared) -> list[str]:
        """The texts to score: each usable document, or under chunking its chunks
        (``p.spans``, at most ``max_chunks_per_doc`` a document)."""
        texts = [t for _, t in p.usable]
        whole = [[ChunkSpan(0, 0, len(t))] for t in texts]
        c = p.chunking
        tokenizer = self.chunk_tokenizer() if c.mode == "chunk" else None
        if c.mode == "chunk" and tokenizer is None:
            raise InvalidRequest(
                f"the backend {self.name} cannot score documents in chunks", "long_documents"
            )
        # A token spans at least one byte of UTF-8: no shorter text needs tokenising.
        long = [
            k
            for k, t in enumerate(texts)
            if tokenizer is not None and len(t.encode("utf-8")) > c.chunk_tokens
        ]
        if tokenizer is not None and long:
            offsets = tokenizer.token_offsets([texts[k] for k in long])
            for k, token_offsets in zip(long, offsets, strict=True):
                spans = chunk_spans(texts[k], token_offsets, c.chunk_tokens, c.chunk_overlap)
                p.dropped_chunks += max(0, len(spans) - c.max_chunks_per_doc)
                whole[k] = spans[: c.max_chunks_per_doc]
        p.spans = whole
        return [t[s.start : s.end] for t, spans in zip(texts, whole, strict=True) for s in spans]

    def _finish(self, p: _Prepared, elapsed_ms: float) -> Outcome:
        result = p.result or PairScores(logits=[], batches=0, tokens=0)
        if isinstance(result, InvalidRequest):
            return result
        if len(result.logits) != len(p.unique):
            raise RuntimeError(
                f"{self.name}: got {len(result.logits)} scores for {len(p.unique)} documents"
            )
        normalize = p.request.normalize
        scores = [0.0 if normalize else UNUSABLE_LOGIT] * p.input_docs
        chunks: list[dict[str, int] | None] = [None] * p.input_docs
        if p.job is not None:  # else: blank query or no usable doc, all unusable
            scored = iter(p.position_to_unique)
            for (i, text), spans in zip(p.usable, p.spans, strict=True):
                logits = [result.logits[next(scored)] for _ in spans]
                logit, best = aggregate(logits, p.chunking.aggregate)
                scores[i] = float(sigmoid(logit) if normalize else logit)
                lead = _leading_whitespace(p.request.docs, i, text)
                span = spans[best]
                chunks[i] = {
                    "index": span.index,
                    "start": lead + span.start,
                    "end": lead + span.end,
                    "chunks": len(spans),
                }
        chunking = p.chunking.mode == "chunk"
        scored_texts = sum(len(s) for s in p.spans)
        meta = ScoreMeta(
            input_docs=p.input_docs,
            usable_docs=len(p.usable),
            unique_docs=len(p.unique),
            dedup_ratio=ScoreMeta.dedup_ratio_of(len(p.unique), scored_texts or len(p.usable)),
            elapsed_ms=elapsed_ms,
            model=self.model_name,
            backend=self.name,
            normalize=normalize,
            inference_batches=result.batches,
            infer_batch_size=self.options.infer_batch_size,
            max_batch_tokens=self.options.max_batch_tokens,
            sort_by_doc_length=self.options.sort_by_doc_length,
            max_model_len=self.options.max_model_len,
            scored_tokens=result.tokens,
            truncated_docs=result.truncated_docs,
            format_keys=self.format_meta(),
            engine_keys=self.meta_extra(),
            chunked_docs=sum(len(s) > 1 for s in p.spans) if chunking else None,
            scored_chunks=scored_texts if chunking else None,
            dropped_chunks=p.dropped_chunks if chunking else None,
            best_chunks=tuple(chunks) if chunking and p.chunking.return_chunks else None,
        )
        return scores, meta

    def score(self, query: Any, docs: Sequence[Any], normalize: bool = True) -> list[float]:
        """Scores only (see :meth:`score_with_meta`)."""
        return self.score_with_meta(query, docs, normalize)[0]

    def rerank(
        self, query: Any, docs: Sequence[Any], top_n: int | None = None, normalize: bool = True
    ) -> list[tuple[int, float]]:
        """``(index, score)`` pairs, best first (``rank_order``), at most ``top_n``."""
        if top_n is not None and top_n < 1:
            raise InvalidRequest("top_n must be >= 1", param="top_n")
        scores = self.score(query, docs, normalize)
        ranked = [(i, scores[i]) for i in rank_order(scores, docs)]
        return ranked if top_n is None else ranked[:top_n]
