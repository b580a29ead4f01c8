"""``qwen3_vllm_score``: Qwen3-Reranker on vLLM's pooling runner (the engine behind
``LLM.score()``).

With the official overrides (``Qwen3ForSequenceClassification``, classifier from the
"no"/"yes" tokens) vLLM's classifier logit is logit(yes) - logit(no). ``LLM.score(query,
docs)`` would join query and document text, tokenise every pair again in the calling
process and then run the classifier; this backend hands the classifier the token ids the
shared encoder already built (``LLM.classify`` on ``TokensPrompt``s), which is the same
model call on the same ids without the second tokenisation.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from reranker.backends.vllm.engine import engine_kwargs, logit, raw_logit_switch
from reranker.backends.vllm.qwen3 import QWEN3_RERANKER_HF_OVERRIDES, Qwen3VLLMBackendBase

logger = logging.getLogger(__name__)


class Qwen3VLLMScoreBackend(Qwen3VLLMBackendBase):
    """Qwen3-Reranker on vLLM's pooling (score) runner; one engine call per request."""

    name: ClassVar[str] = "qwen3_vllm_score"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        from vllm import PoolingParams

        opts = self.options
        overrides = QWEN3_RERANKER_HF_OVERRIDES if opts.use_original_qwen3_hf_overrides else {}
        kwargs = engine_kwargs(opts, "pooling", hf_overrides=dict(overrides))
        if not kwargs["hf_overrides"]:
            del kwargs["hf_overrides"]
        self._start_engines(kwargs)
        # Ask for the raw logit; where this vLLM has no switch, invert its sigmoid.
        self._raw = raw_logit_switch(PoolingParams)
        self._pooling = PoolingParams(**{self._raw: False}) if self._raw else None

    def _logits_on(self, llm: Any, prompts: list[Any]) -> list[float]:
        """The classifier's logit(yes) - logit(no) for each prompt."""
        outputs = llm.classify(prompts, use_tqdm=False, pooling_params=self._pooling)
        values = [float(out.outputs.probs[0]) for out in outputs]
        return values if self._raw else [logit(v) for v in values]
