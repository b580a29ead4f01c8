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
        min_tokens: int,
        first_alone: bool = False,
        ahead: bool = True,
    ) -> Iterator[FlatPrompts]:
        """Encode the jobs in order, handing over a group as soon as it holds
        ``min_tokens`` prompt tokens (and the rest at the end), so the caller can put one
        group on the device while the next is being tokenised. With ``first_alone`` the
        first job is a group of its own, however small (see :class:`HeadSplit`), encoded
        on the caller's thread before any other job is started. With ``ahead`` the jobs
        are tokenised several at a time ahead of the caller (:func:`encode_jobs`); without
        it, one by one as the caller asks (nothing to overlap: a CPU's forward pass)."""

        def encodings() -> Iterator[EncodedPairs | InvalidRequest]:
            rest = jobs
            if first_alone and jobs:
                yield encode_job(encoder, jobs[0])
                rest = jobs[1:]
            yield from encode_jobs(encoder, rest, ahead)

        flat, tokens = cls([], []), 0
        for job, encoded in zip(jobs, encodings(), strict=True):
            known = len(flat.lengths)
            flat.add(job, encoded)
            tokens += sum(flat.lengths[known:])
            if tokens >= min_tokens or first_alone:
                yield flat
                flat, tokens, first_alone = cls([], []), 0, False
        if flat.jobs:
            yield flat

    def add(self, job: ScoreJob, enc: EncodedPairs | InvalidRequest) -> None:
        """One more job and its encoding (:func:`encode_job`: an invalid one keeps its
        error and adds no prompts)."""
        j = len(self.jobs)
        self.jobs.append(job)
        self.encoded.append(enc)
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
        return PromptParts(self.owners[k][0], enc.query_ids, enc.doc_ids[d] + enc.tail_ids)

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


@dataclass
class HeadSplit:
    """The jobs of one call, the first one's first documents split off as a job of their
    own, so that a backend can start the device on them while it tokenises the rest
    (tokenising a 100-document request takes longer than the first batch's forward pass).
    :meth:`join` gives back one result per original job."""

    jobs: list[ScoreJob]
    split: bool

    @classmethod
    def of(cls, jobs: list[ScoreJob], head_docs: int) -> HeadSplit:
        """Split off the first job's first ``head_docs`` documents where it has more than
        twice that many (0: never)."""
        if not jobs or head_docs <= 0 or len(jobs[0].docs) <= 2 * head_docs:
            return cls(list(jobs), False)
        first = jobs[0]
        head = replace(first, docs=first.docs[:head_docs])
        tail = replace(first, docs=first.docs[head_docs:])
        return cls([head, tail, *jobs[1:]], True)

    def join(self, results: list[PairScores | InvalidRequest]) -> list[PairScores | InvalidRequest]:
        """One result per original job: the split job's two halves put back together."""
        if not self.split:
            return results
        head, tail, *rest = results
        if isinstance(head, InvalidRequest) or isinstance(tail, InvalidRequest):
            whole: PairScores | InvalidRequest = head if isinstance(head, InvalidRequest) else tail
        else:
            whole = PairScores(
                head.logits + tail.logits,
                head.batches + tail.batches,
                head.tokens + tail.tokens,
                head.truncated_docs + tail.truncated_docs,
            )
        return [whole, *rest]


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
