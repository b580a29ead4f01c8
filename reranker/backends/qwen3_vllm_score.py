"""``qwen3_vllm_score``: Qwen3-Reranker through vLLM ``LLM.score()`` (pooling runner).

With the official overrides (``Qwen3ForSequenceClassification``, classifier from the
"no"/"yes" tokens) vLLM's classifier logit is logit(yes) - logit(no). vLLM joins query and
document text as ``query + document`` and tokenises the result, so the document is
truncated here, as text that re-tokenises to exactly the kept ids.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, ClassVar

from reranker.backends._hf_loading import hf_tokenize_fn, load_or_explain
from reranker.backends._vllm_common import (
    QWEN3_RERANKER_HF_OVERRIDES,
    engine_kwargs,
    start_engine,
    stop_engine,
)
from reranker.options import VLLMOptions
from reranker.prompts.qwen3 import Qwen3PromptEncoder
from reranker.protocol import PairScores, RerankBackend

logger = logging.getLogger(__name__)


class Qwen3VLLMScoreBackend(RerankBackend):
    """Qwen3-Reranker on vLLM's score API; one engine call per request."""

    name: ClassVar[str] = "qwen3_vllm_score"
    requires: ClassVar[tuple[str, ...]] = ("vllm", "transformers")
    Options = VLLMOptions
    env_prefix: ClassVar[str] = "RERANK_VLLM_"
    env_aliases: ClassVar[dict[str, str]] = {
        "RERANK_VLLM_AUTO_TRITON_ATTN": "auto_triton_attn_on_sm_lt_8"
    }
    options: VLLMOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        from transformers import AutoTokenizer
        from vllm import PoolingParams

        opts = self.options
        self._tokenizer = load_or_explain(
            opts.model_name, "tokenizer", lambda: AutoTokenizer.from_pretrained(opts.model_name)
        )
        self._tokenize = hf_tokenize_fn(self._tokenizer)
        self._encoder = Qwen3PromptEncoder(self.template, self._tokenize, opts.max_model_len)
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

    def _doc_text(self, doc: str, kept_ids: list[int], truncated: bool) -> str:
        """Document text whose tokens (after the lead) are ``kept_ids`` or a prefix of them."""
        if not truncated:
            return doc
        ids = kept_ids
        while ids:
            text = self._tokenizer.decode(ids)
            if text.startswith(self._lead) and self._tokenize([text])[0] == ids:
                return text[len(self._lead):]
            ids = ids[:-1]  # the cut split a character or a merge: keep one token less
        return ""

    def _score_pairs(
        self, query: str, docs: list[str], instruction: str, max_doc_tokens: int | None
    ) -> PairScores:
        encoded = self._encoder.encode(query, docs, instruction, max_doc_tokens)
        lengths = encoded.lengths()
        order = sorted(range(len(docs)), key=lengths.__getitem__) if (
            self.options.sort_by_doc_length
        ) else list(range(len(docs)))
        query_text = self.template.query_text(query, instruction)
        doc_texts = [
            self._lead
            + self._doc_text(docs[i], encoded.doc_ids[i], encoded.truncated[i])
            + self._tail
            for i in order
        ]
        with self._lock:
            outputs = self._llm.score(
                query_text, doc_texts, use_tqdm=False, pooling_params=self._pooling
            )
        logits = [0.0] * len(docs)
        for i, out in zip(order, outputs, strict=True):
            value = float(out.outputs.score)
            logits[i] = value if self._raw else _logit(value)
        return PairScores(logits, 1, sum(lengths), sum(encoded.truncated))

    def close(self) -> None:
        """Shut the engine down."""
        stop_engine(getattr(self, "_llm", None))
        self._llm = None


def _logit(p: float) -> float:
    p = min(max(p, 1e-38), 1.0 - 1e-16)
    return math.log(p) - math.log1p(-p)
