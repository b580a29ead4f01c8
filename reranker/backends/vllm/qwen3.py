"""The Qwen3-Reranker layer of the vLLM backends (``qwen3_vllm``, ``qwen3_vllm_score``):
the Qwen3 prompt's options and encoder on top of the model-neutral
:class:`~reranker.backends.vllm.engine.VLLMBackendBase`, and the official overrides that
make vLLM's pooling runner read the causal checkpoint as a classifier."""

from __future__ import annotations

from typing import Any

from reranker.backends.hf_loading import HFTextTokenizer
from reranker.backends.transformers.jobs import FlatPrompts
from reranker.backends.vllm.engine import VLLMBackendBase
from reranker.core.errors import InvalidRequest
from reranker.core.protocol import PairScores, ScoreJob
from reranker.formats.qwen3 import Qwen3PromptFormat, Qwen3VLLMOptions
from reranker.formats.qwen3_prompt import Qwen3PromptEncoder

# The official overrides that turn the causal Qwen3-Reranker into a sequence classifier
# whose single logit is logit(yes) - logit(no) (vLLM's "from_2_way_softmax").
QWEN3_RERANKER_HF_OVERRIDES: dict[str, Any] = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


class Qwen3VLLMBackendBase(Qwen3PromptFormat, VLLMBackendBase):
    """Shared by ``qwen3_vllm`` and ``qwen3_vllm_score``: the prompt options, the prompt
    encoder, and one engine call per set of jobs (token-id prompts, shortest first).
    Subclasses start their engines with :meth:`_start_engines` and implement
    :meth:`_logits_on` (logit(yes) - logit(no) of each prompt).
    """

    Options = Qwen3VLLMOptions
    options: Qwen3VLLMOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._text_tokenizer = HFTextTokenizer(self._load_tokenizer())
        self._encoder = Qwen3PromptEncoder(
            self.template, self._text_tokenizer, self.options.max_model_len
        )

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        from vllm.inputs import TokensPrompt

        flat = FlatPrompts.build(self._encoder, jobs)
        order = list(range(len(flat.lengths)))
        if self.options.sort_by_doc_length:
            order.sort(key=flat.lengths.__getitem__)
        prompts = [TokensPrompt(prompt_token_ids=flat.prompt_ids(k)) for k in order]
        logits = [0.0] * len(order)
        if prompts:
            for k, value in zip(order, self._call(prompts), strict=True):
                logits[k] = value
        return flat.results(logits, 1 if prompts else 0)
