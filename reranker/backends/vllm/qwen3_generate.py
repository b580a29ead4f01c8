"""``qwen3_vllm``: Qwen3-Reranker through vLLM ``LLM.generate`` (one token, greedy).

The score comes from the real log-probabilities of both "yes" and "no" at the first
generated position: P(yes) = exp(lp_yes) / (exp(lp_yes) + exp(lp_no)), i.e.
sigmoid(lp_yes - lp_no). vLLM's default top-k logprobs can leave "no" out, so the two ids
are requested explicitly (``SamplingParams.logprob_token_ids`` where vLLM has it; else
``allowed_token_ids=[yes, no]`` with processed logprobs). A missing value is an error,
never a substituted constant.

What a call adds to ``LLM.generate`` on the same token ids: nothing per request. The
parameters are built once, detokenize nothing (the score reads two token ids, no text),
and with one engine the call's documents go to the engine in chunks as they are
tokenised (:mod:`streamed`), so the GPU starts on the first ones while the host
tokenises the rest.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from reranker.backends.hf_loading import load_or_explain
from reranker.backends.transformers.jobs import DocChunks, FlatPrompts
from reranker.backends.vllm.engine import engine_kwargs, has_field
from reranker.backends.vllm.qwen3 import Qwen3VLLMBackendBase
from reranker.backends.vllm.streamed import can_stream, run_streamed
from reranker.core.errors import InvalidRequest
from reranker.core.protocol import PairScores, ScoreJob
from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID

logger = logging.getLogger(__name__)

# Documents tokenised at a time before they go to the engine: enough to keep the GPU
# busy while the next ones are tokenised (a few ms of the host's time each).
STREAM_DOCS = 32
# Documents of a first chunk sent to the engine alone, before the first full chunk is
# tokenised (0: none; only where the call's first request has more than twice as many):
# the engine idles while the first chunk is tokenised.
STREAM_HEAD_DOCS = 0


class Qwen3VLLMBackend(Qwen3VLLMBackendBase):
    """Qwen3-Reranker on vLLM's generate path; one engine call per request."""

    name: ClassVar[str] = "qwen3_vllm"
    stream_docs: int = STREAM_DOCS
    """Documents tokenised and sent to the engine at a time."""
    stream_head_docs: int = STREAM_HEAD_DOCS
    """A first chunk of this many documents sent alone (0: none)."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        from vllm import SamplingParams

        opts = self.options
        self._explicit_ids = has_field(SamplingParams, "logprob_token_ids")
        extra: dict[str, Any] = {}
        # The score reads two token ids: no text is decoded (detokenize=False), and only
        # the final output of each request is built (what LLM.generate asks for too).
        common: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}
        common.update(final_output_only())
        if self._explicit_ids:
            self._params = SamplingParams(**common, logprob_token_ids=[YES_TOKEN_ID, NO_TOKEN_ID])
        else:
            # Logprobs after the allowed-token mask: exactly yes and no remain.
            extra["logprobs_mode"] = "processed_logprobs"
            self._params = SamplingParams(
                **common, logprobs=2, allowed_token_ids=[YES_TOKEN_ID, NO_TOKEN_ID]
            )
        # One generated token needs one more position than the longest prompt.
        extra["max_model_len"] = opts.max_model_len + 1
        if self._checkpoint_positions() == opts.max_model_len:
            # That token is sampled from the prompt's last logits and never run through
            # the model (max_tokens=1), so its position is never computed: the checkpoint
            # may claim one more, and prompts keep the same limit as on every backend.
            extra["hf_overrides"] = {"max_position_embeddings": opts.max_model_len + 1}
        self._start_engines(engine_kwargs(opts, "generate", **extra))

    def _checkpoint_positions(self) -> int | None:
        """The checkpoint's ``max_position_embeddings`` (None where it has none)."""
        from transformers import AutoConfig

        name = self.options.model_name
        config = load_or_explain(
            name,
            "config",
            lambda: AutoConfig.from_pretrained(name, local_files_only=self._cache_only),
        )
        positions = getattr(config, "max_position_embeddings", None)
        return positions if isinstance(positions, int) else None

    def meta_extra(self) -> dict[str, Any]:
        """Device, dtype, and how the yes/no logprobs are obtained."""
        return {
            **super().meta_extra(),
            "logprob_method": "logprob_token_ids" if self._explicit_ids else "allowed_token_ids",
        }

    def _logits_on(self, llm: Any, prompts: list[Any]) -> list[float]:
        """lp(yes) - lp(no) at the first generated position of each prompt."""
        outputs = llm.generate(prompts, self._params, use_tqdm=False)
        return [read_output(out) for out in outputs]

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        """With one engine, the call streamed (see the module docstring); with several
        (data parallel), each engine's share in one ``generate`` call."""
        if not self.streams():
            return super()._score_jobs(jobs)
        return self._guarded(lambda: self._streamed(jobs))

    def streams(self) -> bool:
        """Whether calls are streamed to the engine: one engine, whose vLLM has the
        engine methods :func:`run_streamed` needs."""
        return len(self._engines) == 1 and can_stream(self._llm)

    def _streamed(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        """The jobs' documents tokenised ``stream_docs`` at a time (the first
        ``stream_head_docs`` alone, where set), each chunk's prompts (shortest first)
        added to the engine before the next is tokenised."""
        from vllm.inputs import TokensPrompt

        split = DocChunks.of(jobs, self.stream_docs, self.stream_head_docs)
        encoded: list[tuple[FlatPrompts, list[int]]] = []

        def chunks() -> Any:
            for job in split.jobs:
                flat = FlatPrompts.build(self._encoder, [job])
                order = list(range(len(flat.lengths)))
                if self.options.sort_by_doc_length:
                    order.sort(key=flat.lengths.__getitem__)
                encoded.append((flat, order))
                yield [TokensPrompt(prompt_token_ids=flat.prompt_ids(k)) for k in order]

        values = run_streamed(self._llm, chunks(), self._params, read_output)
        results: list[PairScores | InvalidRequest] = []
        for (flat, order), chunk_values in zip(encoded, values, strict=True):
            logits = [0.0] * len(order)
            for k, value in zip(order, chunk_values, strict=True):
                logits[k] = value
            results += flat.results(logits, 1)
        return split.join(results, 1 if any(flat.lengths for flat, _ in encoded) else 0)


def final_output_only() -> dict[str, Any]:
    """``output_kind=FINAL_ONLY`` where this vLLM has it (LLM.generate sets it on every
    request; requests added to the engine directly need it said)."""
    try:
        from vllm.sampling_params import RequestOutputKind
    except ImportError:
        return {}
    return {"output_kind": RequestOutputKind.FINAL_ONLY}


def read_output(output: Any) -> float:
    """lp(yes) - lp(no) of one request's output (its first generated position)."""
    return yes_minus_no(output.outputs[0].logprobs[0])


def yes_minus_no(position_logprobs: dict[int, Any]) -> float:
    """lp(yes) - lp(no) at one position; both must be present."""
    try:
        return float(position_logprobs[YES_TOKEN_ID].logprob) - float(
            position_logprobs[NO_TOKEN_ID].logprob
        )
    except KeyError as exc:
        raise RuntimeError(
            f"vLLM returned no logprob for token {exc.args[0]} (yes={YES_TOKEN_ID}, "
            f"no={NO_TOKEN_ID}); refusing to guess a score"
        ) from exc
