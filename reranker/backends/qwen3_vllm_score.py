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
import math
import threading
from typing import Any, ClassVar

from reranker.backends._jobs import FlatPrompts
from reranker.backends._vllm_common import (
    QWEN3_RERANKER_HF_OVERRIDES,
    VLLMBackendBase,
    engine_kwargs,
    start_engine,
)
from reranker.errors import InvalidRequest
from reranker.protocol import PairScores, ScoreJob

logger = logging.getLogger(__name__)


class Qwen3VLLMScoreBackend(VLLMBackendBase):
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
        self._llm = start_engine(opts, kwargs)
        fields = set(getattr(PoolingParams, "__struct_fields__", ())) | set(
            getattr(PoolingParams, "__dataclass_fields__", {})
        )
        # Ask for the raw logit; where this vLLM has no switch, invert its sigmoid.
        self._raw = next((f for f in ("use_activation", "activation") if f in fields), None)
        self._pooling = PoolingParams(**{self._raw: False}) if self._raw else None
        self._lock = threading.Lock()

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        from vllm.inputs import TokensPrompt

        flat = FlatPrompts.build(self._encoder, jobs)
        order = self._engine_order(flat.lengths)
        prompts = [TokensPrompt(prompt_token_ids=flat.prompt_ids(k)) for k in order]
        logits = [0.0] * len(order)
        if prompts:
            with self._lock:
                outputs = self._llm.classify(prompts, use_tqdm=False, pooling_params=self._pooling)
            for k, out in zip(order, outputs, strict=True):
                value = float(out.outputs.probs[0])
                logits[k] = value if self._raw else _logit(value)
        return flat.results(logits, 1 if prompts else 0)


def _logit(p: float) -> float:
    p = min(max(p, 1e-38), 1.0 - 1e-16)
    return math.log(p) - math.log1p(-p)
