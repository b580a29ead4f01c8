"""Several requests' prompts as one flat list, so they share batches or engine calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from reranker.errors import InvalidRequest
from reranker.prompts.qwen3 import EncodedPairs, Qwen3PromptEncoder
from reranker.protocol import PairScores, ScoreJob


@dataclass
class FlatPrompts:
    """Every (job, document) prompt of a set of jobs, with the way back to each job."""

    jobs: list[ScoreJob]
    encoded: list[EncodedPairs | InvalidRequest]
    owners: list[tuple[int, int]] = field(default_factory=list)  # (job, doc) per prompt
    lengths: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, encoder: Qwen3PromptEncoder, jobs: list[ScoreJob]) -> FlatPrompts:
        """Encode each job; a job whose input is invalid keeps its error and no prompts."""
        flat = cls(jobs, [])
        for j, job in enumerate(jobs):
            try:
                enc = encoder.encode(job.query, job.docs, job.instruction, job.max_doc_tokens)
            except InvalidRequest as exc:
                flat.encoded.append(exc)
                continue
            flat.encoded.append(enc)
            flat.owners += [(j, d) for d in range(len(job.docs))]
            flat.lengths += enc.lengths()
        return flat

    def _pairs(self, k: int) -> tuple[EncodedPairs, int]:
        j, d = self.owners[k]
        enc = self.encoded[j]
        assert isinstance(enc, EncodedPairs)
        return enc, d

    def prompt_ids(self, k: int) -> list[int]:
        """Token ids of flat prompt ``k``."""
        enc, d = self._pairs(k)
        return enc.prompt_ids(d)

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
