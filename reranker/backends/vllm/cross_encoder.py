"""``cross_encoder_vllm``: a cross-encoder reranker (BERT, XLM-RoBERTa, RoBERTa, ModernBERT
sequence classifiers with one label, or a Qwen3-Reranker converted to
``Qwen3ForSequenceClassification``) on vLLM's pooling runner.

Each (query, document) pair is built by the family's pair format
(:mod:`reranker.formats.cross_encoder`: a text pair as the model's own tokenizer joins it,
or the Qwen3-Reranker prompt; the document cut at a token boundary when the pair would
not fit, the query never cut) and handed to the classifier as token ids (``LLM.classify``
on ``TokensPrompt``s). The score is the classifier's raw logit, no sigmoid. A Qwen3
classifier is served as its checkpoint is (its ``score`` head read at the last token),
without the original Qwen3-Reranker's overrides.

Token types: vLLM's BERT-style models read a pair's token type ids from the request's
``PoolingParams.extra_kwargs["compressed_token_type_ids"]``, the position of the first
type-1 token (the pair is all zeros, then all ones). That is how vLLM's own ``LLM.score``
passes them (vLLM 0.10 to 0.32 at least); a ``token_type_ids`` key of a ``TokensPrompt``
reaches the model only through ``LLM.score``'s pair path, never through ``LLM.classify``.
This backend sets the compressed form per pair itself.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field, field_validator

from reranker.backends.hf_loading import HFTextTokenizer
from reranker.backends.vllm.engine import (
    VLLMBackendBase,
    engine_kwargs,
    has_field,
    logit,
    raw_logit_switch,
)
from reranker.core.errors import ConfigError, InvalidRequest
from reranker.core.options import VLLMOptions
from reranker.core.protocol import PairScores, ScoreJob
from reranker.formats.cross_encoder import PairIds, pair_limit, split_scores
from reranker.formats.cross_encoder_format import CrossEncoderFormat, CrossEncoderFormatOptions

logger = logging.getLogger(__name__)


class CrossEncoderVLLMOptions(VLLMOptions, CrossEncoderFormatOptions):
    """Options of ``cross_encoder_vllm``: vLLM's engine options and the pair format's;
    the Qwen3-Reranker overrides do not apply to a cross-encoder and stay off."""

    use_original_qwen3_hf_overrides: bool = Field(
        False, description="Qwen3-Reranker only; must stay false for a cross-encoder"
    )

    @field_validator("use_original_qwen3_hf_overrides")
    @classmethod
    def _no_qwen3_overrides(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "use_original_qwen3_hf_overrides turns a causal Qwen3-Reranker into a "
                "classifier; a cross-encoder checkpoint (a converted Qwen3 sequence "
                "classifier included) already is one. Leave it false (the original "
                "Qwen3-Reranker: the qwen3_vllm_score backend)"
            )
        return value


def compressed_token_types(types: list[int]) -> int:
    """The position of the first type-1 token of a pair's ``token_type_ids`` (its length
    if none): vLLM's compressed form. A pair is all zeros then all ones; anything else is
    a :class:`RuntimeError` (vLLM could not pass it on)."""
    first_one = types.index(1) if 1 in types else len(types)
    if any(types[:first_one]) or types.count(1) != len(types) - first_one:
        raise RuntimeError(f"token type ids are not zeros then ones: {types}")
    return first_one


class CrossEncoderVLLMBackend(CrossEncoderFormat, VLLMBackendBase):
    """A cross-encoder on vLLM's pooling runner: ``LLM.classify`` on the token ids of each
    (query, document) pair; one engine call per set of jobs (shortest pairs first) on
    each data-parallel engine."""

    name: ClassVar[str] = "cross_encoder_vllm"
    Options = CrossEncoderVLLMOptions
    options: CrossEncoderVLLMOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        # Not a cross-encoder (a causal LM, several labels): an error before any loading.
        self._read_family()
        from vllm import PoolingParams

        self._tokenizer = self._load_tokenizer()
        self._max_len = pair_limit(self._tokenizer, self.options.max_model_len)
        self._text_tokenizer = HFTextTokenizer(self._tokenizer)
        self._pairs = self._pair_encoder(self._tokenizer, self._text_tokenizer, self._max_len)
        # Ask for the raw logit; where this vLLM has no switch, invert its sigmoid.
        self._raw = raw_logit_switch(PoolingParams)
        self._pooling = PoolingParams(**{self._raw: False}) if self._raw else PoolingParams()
        self._typed = has_field(PoolingParams, "extra_kwargs")
        # A bidirectional encoder's states of a prefix depend on what follows it; a
        # causal (Qwen3) classifier's do not.
        caching = self.options.enable_prefix_caching and self.model_info.reads_qwen3_prompt
        kwargs = engine_kwargs(
            self.options, "pooling", max_model_len=self._max_len, enable_prefix_caching=caching
        )
        self._start_engines(kwargs)

    def _params(self, types: list[int] | None) -> Any:
        """The ``PoolingParams`` of one pair: the raw-logit switch, and its token types."""
        if types is None or not any(types):
            return self._pooling
        if not self._typed:
            raise ConfigError(
                f"this vLLM's PoolingParams has no extra_kwargs: it cannot pass the token "
                f"type ids a {self.model_info.family} pair needs (use vLLM 0.10 or newer)"
            )
        params = self._pooling.clone()
        params.extra_kwargs = {
            **(params.extra_kwargs or {}),
            "compressed_token_type_ids": compressed_token_types(types),
        }
        return params

    def _logits_on(self, llm: Any, prompts: list[tuple[Any, Any]]) -> list[float]:
        """The classifier's raw logit for each ``(TokensPrompt, PoolingParams)``."""
        outputs = llm.classify(
            [p for p, _ in prompts], use_tqdm=False, pooling_params=[q for _, q in prompts]
        )
        values = [float(out.outputs.probs[0]) for out in outputs]
        return values if self._raw else [logit(v) for v in values]

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        """All jobs' pairs in one engine call (shortest first when
        ``sort_by_doc_length``); a job whose query leaves no room is its own error."""
        from vllm.inputs import TokensPrompt

        encoded: list[PairIds | InvalidRequest] = []
        pairs: list[tuple[list[int], list[int] | None]] = []
        for job in jobs:
            try:
                job_pairs = self._pairs.encode(
                    job.query, job.docs, job.instruction, job.max_doc_tokens
                )
            except InvalidRequest as exc:
                encoded.append(exc)
                continue
            encoded.append(job_pairs)
            types: list[list[int] | None] = (
                list(job_pairs.types)
                if job_pairs.types is not None
                else [None] * len(job_pairs.ids)
            )
            pairs.extend(zip(job_pairs.ids, types, strict=True))
        order = list(range(len(pairs)))
        if self.options.sort_by_doc_length:
            order.sort(key=lambda k: len(pairs[k][0]))
        prompts = [
            (TokensPrompt(prompt_token_ids=pairs[k][0]), self._params(pairs[k][1])) for k in order
        ]
        logits = [0.0] * len(pairs)
        if prompts:
            for k, value in zip(order, self._call(prompts), strict=True):
                logits[k] = value
        return split_scores(encoded, logits, lambda a, b: 1)

    def meta_extra(self) -> dict[str, Any]:
        """The device and dtype the engine runs its model in, and the model family."""
        return {**super().meta_extra(), "family": self.model_info.family}
