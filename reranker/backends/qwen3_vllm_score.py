"""``qwen3_vllm_score``: Qwen3-Reranker through vLLM ``LLM.score()`` (pooling runner).

With the official overrides (``Qwen3ForSequenceClassification``, classifier from the
"no"/"yes" tokens) vLLM's classifier logit is logit(yes) - logit(no). vLLM joins query and
document text as ``query + document`` and tokenises the result, so documents go in as
text, already truncated by the shared encoder to text that re-tokenises to the kept ids.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, ClassVar

from reranker.backends._vllm_common import (
    QWEN3_RERANKER_HF_OVERRIDES,
    VLLMBackendBase,
    engine_kwargs,
    start_engine,
)
from reranker.protocol import PairScores

logger = logging.getLogger(__name__)


class Qwen3VLLMScoreBackend(VLLMBackendBase):
    """Qwen3-Reranker on vLLM's score API; one engine call per request."""

    name: ClassVar[str] = "qwen3_vllm_score"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        from vllm import PoolingParams

        opts = self.options
        self._lead, self._tail = self.template.document_lead_and_tail()
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

    def _score_pairs(
        self, query: str, docs: list[str], instruction: str, max_doc_tokens: int | None
    ) -> PairScores:
        encoded = self._encoder.encode(query, docs, instruction, max_doc_tokens)
        lengths = encoded.lengths()
        order = self._engine_order(lengths)
        query_text = self.template.query_text(query, instruction)
        doc_texts = [self._lead + encoded.doc_texts[i] + self._tail for i in order]
        with self._lock:
            outputs = self._llm.score(
                query_text, doc_texts, use_tqdm=False, pooling_params=self._pooling
            )
        logits = [0.0] * len(docs)
        for i, out in zip(order, outputs, strict=True):
            value = float(out.outputs.score)
            logits[i] = value if self._raw else _logit(value)
        return PairScores(logits, 1, sum(lengths), sum(encoded.truncated))


def _logit(p: float) -> float:
    p = min(max(p, 1e-38), 1.0 - 1e-16)
    return math.log(p) - math.log1p(-p)
