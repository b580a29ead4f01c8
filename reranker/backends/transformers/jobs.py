"""Several requests' prompts as one flat list, so they share batches or engine calls."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

from reranker.backends.threaded_tokenize import map_in_order
from reranker.backends.transformers.packing import PromptParts
from reranker.core.errors import InvalidRequest
from reranker.core.protocol import PairScores, ScoreJob
from reranker.formats.qwen3_prompt import EncodedPairs, Qwen3PromptEncoder

T = TypeVar("T")


@dataclass
class FlatPrompts:
    """Every (job, document) prompt of a set of jobs, with the way back to each job."""

    jobs: list[ScoreJob]
    encoded: list[EncodedPairs | InvalidRequest]
    owners: list[tuple[int, int]] = field(default_factory=list)  # (job, doc) per prompt
    lengths: list[int] = field(default_factory=list)
    # Per job: prompts of jobs with equal keys share their query part in a packed batch
    # (the chunks of one request, :class:`DocChunks`); by default each job its own.
    keys: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, encoder: Qwen3PromptEncoder, jobs: list[ScoreJob]) -> FlatPrompts:
        """Encode each job (several at once: :func:`encode_jobs`); a job whose input is
        invalid keeps its error and no prompts."""
        flat = cls([], [])
        for job, encoded in zip(jobs, encode_jobs(encoder, jobs), strict=True):
            flat.add(job, encoded)
        return flat

    @classmethod
    def in_waves(
        cls,
        encoder: Qwen3PromptEncoder,
        jobs: list[ScoreJob],
        limits: WaveLimits,
        first_alone: bool = False,
        ahead: bool = True,
        keys: list[int] | None = None,
    ) -> Iterator[FlatPrompts]:
        """Encode the jobs in order and hand them over in waves, so the caller can put
        one wave on the device while the next is being tokenised. A wave is as many
        consecutive jobs as fit in one batch of ``limits`` (the next job that would not
        fit starts the next wave; a job too large for one batch is a wave of its own).
        With ``first_alone`` the first job is a wave of its own, however small (see
        :class:`DocChunks`), encoded on the caller's thread before any other job is
        started. With ``ahead`` the jobs are tokenised several at a time ahead of the
        caller (:func:`encode_jobs`); without it, one by one as the caller asks (nothing to
        overlap: a CPU's forward pass). ``keys``: each job's prefix-sharing key
        (:attr:`keys`), by default its position."""

        def encodings() -> Iterator[EncodedPairs | InvalidRequest]:
            rest = jobs
            if first_alone and jobs:
                yield encode_job(encoder, jobs[0])
                rest = jobs[1:]
            yield from encode_jobs(encoder, rest, ahead)

        flat, tokens, max_tokens = cls([], []), 0, limits.first_tokens
        for j, (job, encoded) in enumerate(zip(jobs, encodings(), strict=True)):
            lengths = [] if isinstance(encoded, InvalidRequest) else encoded.lengths()
            size = sum(lengths)
            if (
                lengths
                and flat.lengths
                and (
                    tokens + size > max_tokens or len(flat.lengths) + len(lengths) > limits.prompts
                )
            ):
                yield flat
                flat, tokens, max_tokens = cls([], []), 0, limits.tokens
            flat.add(job, encoded, j if keys is None else keys[j])
            tokens += size
            if first_alone:
                yield flat
                flat, tokens, max_tokens, first_alone = cls([], []), 0, limits.tokens, False
        if flat.jobs:
            yield flat

    def add(
        self, job: ScoreJob, enc: EncodedPairs | InvalidRequest, key: int | None = None
    ) -> None:
        """One more job and its encoding (:func:`encode_job`: an invalid one keeps its
        error and adds no prompts); ``key``: its prefix-sharing key (default: its index)."""
        j = len(self.jobs)
        self.jobs.append(job)
        self.encoded.append(enc)
        self.keys.append(j if key is None else key)
        if isinstance(enc, InvalidRequest):
            return
        self.owners += [(j, d) for d in range(len(job.docs))]
        self.lengths += enc.lengths()

    def _pairs(self, k: int) -> tuple[EncodedPairs, int]:
        j, d = self.owners[k]
        enc = self.encoded[j]
        assert isinstance(enc, EncodedPairs)
        return enc, d

    def prompt_ids(self, k: int) -> list[int]:
        """Token ids of flat prompt ``k``."""
        enc, d = self._pairs(k)
        return enc.prompt_ids(d)

    def prompt_parts(self, k: int) -> PromptParts:
        """Flat prompt ``k`` as its job's query part + its own document and suffix."""
        enc, d = self._pairs(k)
        return PromptParts(
            self.keys[self.owners[k][0]], enc.query_ids, enc.doc_ids[d] + enc.tail_ids
        )

    def results(self, logits: list[float], batches: int) -> list[PairScores | InvalidRequest]:
        """Per-job results from one logit per flat prompt."""
        per_job: list[list[float]] = [[0.0] * len(job.docs) for job in self.jobs]
        for (j, d), value in zip(self.owners, logits, strict=True):
            per_job[j][d] = value
        out: list[PairScores | InvalidRequest] = []
        for enc, values in zip(self.encoded, per_job, strict=True):
            if isinstance(enc, InvalidRequest):
                out.append(enc)
            else:
                out.append(PairScores(values, batches, sum(enc.lengths()), sum(enc.truncated)))
        return out


def encode_job(encoder: Qwen3PromptEncoder, job: ScoreJob) -> EncodedPairs | InvalidRequest:
    """A job's prompts, or the :class:`InvalidRequest` its input raises."""
    if job.instruction is None:  # the Qwen3 prompt always has one (a default)
        raise TypeError("a Qwen3 prompt needs an instruction")
    try:
        return encoder.encode(job.query, job.docs, job.instruction, job.max_doc_tokens)
    except InvalidRequest as exc:
        return exc


def encode_jobs(
    encoder: Qwen3PromptEncoder, jobs: list[ScoreJob], ahead: bool = True
) -> Iterator[EncodedPairs | InvalidRequest]:
    """:func:`encode_job` of each job, in order; with ``ahead`` and a tokenizer that
    releases the GIL, several tokenised at once ahead of the caller
    (:func:`reranker.backends.threaded_tokenize.map_in_order`), else one by one as asked."""
    threads = None if ahead and len(jobs) > 1 and encoder.releases_gil else 1
    return map_in_order(partial(encode_job, encoder), jobs, threads)


@dataclass(frozen=True)
class WaveLimits:
    """How large a wave of :meth:`FlatPrompts.in_waves` may grow: one batch's prompt
    tokens and prompts; the first wave's tokens may be fewer (the largest CUDA graph)."""

    tokens: int
    prompts: int
    first_tokens: int


@dataclass
class DocChunks:
    """A call's jobs, those of more than ``above`` documents cut into jobs of a few
    documents each, so that a backend can start the device (or engine) on the first
    while it tokenises the rest, and fill each batch to its budget however the documents
    fall into requests; and the way back: ``owners[i]`` is the original job of chunk
    ``i``, :meth:`join` gives one result per original job."""

    jobs: list[ScoreJob]
    owners: list[int]
    count: int  # original jobs
    head: bool = False  # the first chunk is the first job's first documents, to go alone

    @classmethod
    def of(cls, jobs: list[ScoreJob], size: int, head: int = 0, above: int = 0) -> DocChunks:
        """Cut each job of more than ``above`` documents into chunks of at most ``size``,
        in order (``size`` 0: jobs stay whole; a job without documents stays one chunk).
        With ``head``, a first job of more than twice that many documents gives its first
        ``head`` documents a chunk of their own, first (:attr:`head`): tokenising a
        100-document request takes longer than the first batch's forward pass."""
        split_head = head > 0 and bool(jobs) and len(jobs[0].docs) > 2 * head
        chunks: list[ScoreJob] = []
        owners: list[int] = []
        for j, job in enumerate(jobs):
            cuts = [0, head] if j == 0 and split_head else [0]
            if size > 0 and len(job.docs) > above:
                cuts += range(cuts[-1] + size, len(job.docs), size)
            if len(cuts) == 1:
                chunks.append(job)
                owners.append(j)
                continue
            for start, end in zip(cuts, [*cuts[1:], len(job.docs)], strict=True):
                chunks.append(replace(job, docs=job.docs[start:end]))
                owners.append(j)
        return cls(chunks, owners, len(jobs), split_head)

    def join(
        self, results: list[PairScores | InvalidRequest], batches: int | list[int]
    ) -> list[PairScores | InvalidRequest]:
        """One result per original job from one per chunk: logits in order, tokens and
        truncated documents summed, ``batches`` the batches (or engine calls) of each
        original job (one number: of every job); a chunk's error is its job's."""
        per_job = [batches] * self.count if isinstance(batches, int) else batches
        logits: list[list[float]] = [[] for _ in range(self.count)]
        tokens = [0] * self.count
        truncated = [0] * self.count
        errors: dict[int, InvalidRequest] = {}
        for owner, result in zip(self.owners, results, strict=True):
            if owner in errors:
                continue
            if isinstance(result, InvalidRequest):
                errors[owner] = result
                continue
            logits[owner] += result.logits
            tokens[owner] += result.tokens
            truncated[owner] += result.truncated_docs
        return [
            errors[j] if j in errors else PairScores(logits[j], per_job[j], tokens[j], truncated[j])
            for j in range(self.count)
        ]


@dataclass(frozen=True)
class _Raised:
    error: BaseException


_DONE = object()


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield what ``items`` yields, while a worker thread already computes the next items.

    For tokenising (the tokenizer's Rust code runs without the GIL) while the caller
    packs and launches the previous batch. The worker runs ``items`` to the end however
    far the caller gets (it never blocks, so it never outlives its work); an exception
    it raises is raised to the caller in its place.
    """
    ready: queue.SimpleQueue[object] = queue.SimpleQueue()

    def produce() -> None:
        try:
            for item in items:
                ready.put(item)
        except BaseException as exc:  # handed over to the caller's thread
            ready.put(_Raised(exc))
        else:
            ready.put(_DONE)

    threading.Thread(target=produce, name="reranker-read-ahead", daemon=True).start()
    while (item := ready.get()) is not _DONE:
        if isinstance(item, _Raised):
            raise item.error
        yield item  # type: ignore[misc]
