"""``cross_encoder_transformers``: a cross-encoder reranker (BERT, XLM-RoBERTa, RoBERTa,
ModernBERT, or a Qwen3-Reranker converted to ``Qwen3ForSequenceClassification``; a
``*ForSequenceClassification`` with one label) on Hugging Face transformers.

Each (query, document) pair is built by the family's pair format
(:mod:`reranker.formats.cross_encoder`: a text pair as the model's tokenizer joins it, or
the Qwen3-Reranker prompt), batched by length under ``max_batch_tokens`` (right-padded),
and read by the classification head: its one logit is the raw score, its sigmoid the
normalised one, as ``sentence_transformers.CrossEncoder`` scores the model. A Qwen3
classifier reads each row at its last token that is not the padding id
(``config.pad_token_id``), which is the prompt's last token: rows are padded with that id.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field

from reranker.backends.hf_loading import HFTextTokenizer, check_hub_model, load_or_explain
from reranker.backends.runtime import resolve_device, resolve_dtype
from reranker.core.batching import plan_batches
from reranker.core.errors import ConfigError
from reranker.core.protocol import PairScores, RerankBackend
from reranker.formats.cross_encoder import Qwen3PairEncoder, pair_limit
from reranker.formats.cross_encoder_format import CrossEncoderFormat, CrossEncoderFormatOptions

logger = logging.getLogger(__name__)


class CrossEncoderTransformersOptions(CrossEncoderFormatOptions):
    """Options of ``cross_encoder_transformers``."""

    model_name: str = Field(
        "BAAI/bge-reranker-v2-m3", min_length=1, description="Hub id or local directory"
    )
    max_model_len: int = Field(
        512,
        ge=8,
        le=131072,
        description="Tokens of a pair, at most the model's own limit (a Qwen3 sequence "
        "classifier: 4096 when unset)",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 (or float16) on GPU, float32 on CPU"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    local_files_only: bool = False


class CrossEncoderTransformersBackend(CrossEncoderFormat, RerankBackend):
    """A sequence-classification cross-encoder on transformers (see the module doc)."""

    name: ClassVar[str] = "cross_encoder_transformers"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    Options = CrossEncoderTransformersOptions
    env_prefix: ClassVar[str] = "RERANK_CE_"
    options: CrossEncoderTransformersOptions

    check_model = staticmethod(check_hub_model)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load in every service log: noise
        opts = self.options
        self._read_family()
        self.device = torch.device(resolve_device(opts.device))
        self.dtype = getattr(torch, resolve_dtype(opts.dtype, self.device.type))
        local = opts.local_files_only
        self.tokenizer = load_or_explain(
            opts.model_name,
            "tokenizer",
            lambda: AutoTokenizer.from_pretrained(opts.model_name, local_files_only=local),
        )
        model = load_or_explain(
            opts.model_name,
            "model",
            lambda: AutoModelForSequenceClassification.from_pretrained(
                opts.model_name, dtype=self.dtype, local_files_only=local
            ),
        )
        self.model = model.to(self.device).eval()
        self.max_len = pair_limit(self.tokenizer, opts.max_model_len)
        self._text_tokenizer = HFTextTokenizer(self.tokenizer)
        self.pairs = self._pair_encoder(self.tokenizer, self._text_tokenizer, self.max_len)
        self.pad_id = self._padding_id()
        logger.info(
            "%s ready: model=%s family=%s device=%s dtype=%s max_len=%d",
            self.name,
            opts.model_name,
            self.model_info.family,
            self.device,
            self.dtype,
            self.max_len,
        )

    def _padding_id(self) -> int:
        """The id rows are padded with. A Qwen3 classifier reads a row at its last token
        that is not ``config.pad_token_id``: that id, never the prompt's last token (a
        checkpoint without one is given the tokenizer's)."""
        if not isinstance(self.pairs, Qwen3PairEncoder):
            return int(self.tokenizer.pad_token_id or 0)
        config = self.model.config.get_text_config()
        if config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            config.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        if config.pad_token_id is None or config.pad_token_id == self.pairs.last_token():
            raise ConfigError(
                f"{self.options.model_name}: no padding id apart from the prompt's last token "
                f"({config.pad_token_id}); set pad_token_id in its config.json"
            )
        return int(config.pad_token_id)

    def meta_extra(self) -> dict[str, Any]:
        """Device, dtype and the model family in force."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "family": self.model_info.family,
        }

    def _score_pairs(
        self, query: str, docs: list[str], instruction: str | None, max_doc_tokens: int | None
    ) -> PairScores:
        import torch

        pairs = self.pairs.encode(query, docs, instruction, max_doc_tokens)
        ids, types = pairs.ids, pairs.types
        lengths = [len(x) for x in ids]
        batches = plan_batches(
            lengths,
            self.options.max_batch_tokens,
            self.options.infer_batch_size,
            self.options.sort_by_doc_length,
        )
        logits = [0.0] * len(docs)
        with torch.inference_mode():
            for batch in batches:
                width = max(lengths[i] for i in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                token_types = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = torch.tensor(ids[i])
                    mask[row, : lengths[i]] = 1
                    if types is not None:
                        token_types[row, : lengths[i]] = torch.tensor(types[i])
                inputs = {"input_ids": input_ids, "attention_mask": mask}
                if types is not None:
                    inputs["token_type_ids"] = token_types
                out = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
                for row, value in zip(batch, out[:, 0].float().tolist(), strict=True):
                    logits[row] = float(value)
        return PairScores(
            logits, batches=len(batches), tokens=sum(lengths), truncated_docs=pairs.truncated
        )

    def close(self) -> None:
        """Free the model."""
        self.model = None
