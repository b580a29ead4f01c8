"""``cross_encoder_transformers``: a cross-encoder reranker (BERT, XLM-RoBERTa, RoBERTa,
ModernBERT, or a Qwen3-Reranker converted to ``Qwen3ForSequenceClassification``; a
``*ForSequenceClassification`` with one label) on Hugging Face transformers.

Each (query, document) pair is built by the family's pair format
(:mod:`reranker.formats.cross_encoder`: a text pair as the model's tokenizer joins it, or
the Qwen3-Reranker prompt), batched by length under ``max_batch_tokens`` (right-padded;
the pairs of all requests scored together share batches), and read by the classification
head: its one logit is the raw score, its sigmoid the
normalised one, as ``sentence_transformers.CrossEncoder`` scores the model. A Qwen3
classifier reads each row at its last token that is not the padding id
(``config.pad_token_id``), which is the prompt's last token: rows are padded with that id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from reranker.backends.hf_loading import HFTextTokenizer, check_hub_model, load_or_explain
from reranker.backends.runtime import resolve_device, resolve_dtype
from reranker.backends.transformers.host_copy import start_copy_to_host
from reranker.core.batching import plan_batches
from reranker.core.errors import ConfigError, InvalidRequest
from reranker.core.options import (
    Quantization,
    fp8_fast_accum_field,
    fp8_fast_accum_in_force,
    quantization_field,
)
from reranker.core.protocol import PairScores, RerankBackend, ScoreJob
from reranker.formats.cross_encoder import PairIds, Qwen3PairEncoder, pair_limit, split_scores
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
    quantization: Quantization = quantization_field(
        "the encoder (or decoder) layers' linear layers only (not the embeddings, not the "
        "pooler or classification head), matmuls through torch._scaled_mm; needs a CUDA "
        "GPU of compute capability 8.9 or newer (Ada, Hopper), or the CPU"
    )
    fp8_fast_accum: bool = fp8_fast_accum_field()
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
        self.overlaps_calls = self.device.type == "cuda"  # _start_jobs returns before the GPU ends
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
        self.fp8_matmuls = self._quantize()
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

    def _quantize(self) -> int:
        """``quantization: fp8``: the linear layers of the model's layer stacks (the
        ``nn.ModuleList`` of its base model: BERT's ``encoder.layer``, ModernBERT's and
        Qwen3's ``layers``) as fp8 ones (:mod:`fp8`); embeddings, pooler and head keep
        the model's dtype. Returns how many fp8 matmuls they run (0 without fp8)."""
        if self.options.quantization != "fp8":
            return 0
        import torch

        from reranker.backends.transformers import fp8

        fp8.check_device(self.device, self.options.fp8_fast_accum)
        body = self.model.base_model
        stacks = [m for m in body.modules() if isinstance(m, torch.nn.ModuleList)]
        count = fp8.quantize_layers(
            (layer for stack in stacks for layer in stack), self.options.fp8_fast_accum
        )
        if not count:
            raise ConfigError(
                f"quantization: fp8, but no linear layer of {self.options.model_name}'s "
                "layers has widths the fp8 matmul takes (multiples of 16); set "
                "quantization: none"
            )
        logger.info("quantization fp8: %d fp8 matmuls in the model's layers", count)
        return count

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
            "quantization": self.options.quantization,
            "fp8_fast_accum": fp8_fast_accum_in_force(self.options),
        }

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        """All jobs scored in shared batches (:meth:`_start_jobs`, waiting for the results)."""
        return self._start_jobs(jobs)()

    def _start_jobs(self, jobs: list[ScoreJob]) -> Callable[[], list[PairScores | InvalidRequest]]:
        """All jobs' pairs in shared batches (by length under ``max_batch_tokens``), queued
        on the device; a job whose query leaves no room is its own error. The function
        returned waits for the logits and returns the results."""
        encoded: list[PairIds | InvalidRequest] = []
        ids: list[list[int]] = []
        types: list[list[int]] | None = []
        for job in jobs:
            try:
                pairs = self.pairs.encode(job.query, job.docs, job.instruction, job.max_doc_tokens)
            except InvalidRequest as exc:
                encoded.append(exc)
                continue
            encoded.append(pairs)
            ids.extend(pairs.ids)
            if pairs.types is None:
                types = None
            elif types is not None:
                types.extend(pairs.types)
        batches, values = self._launch(ids, types) if ids else ([], list)

        def collect() -> list[PairScores | InvalidRequest]:
            logits = [0.0] * len(ids)
            batch_of = [0] * len(ids)
            rows = (i for batch in batches for i in batch)
            for row, value in zip(rows, values(), strict=True):
                logits[row] = float(value)
            for number, batch in enumerate(batches):
                for i in batch:
                    batch_of[i] = number
            return split_scores(encoded, logits, lambda a, b: len(set(batch_of[a:b])))

        return collect

    def _launch(
        self, ids: list[list[int]], types: list[list[int]] | None
    ) -> tuple[list[list[int]], Callable[[], list[float]]]:
        """Queue the classifier on every batch: returns the batches (rows of ``ids``) and
        a function that waits for their logits, in batch order. Each batch's tensors are
        built at once (right-padded) and copied to the device without waiting for the
        batches before it; the logits are read once, after the last batch."""
        import torch

        lengths = [len(x) for x in ids]
        batches = plan_batches(
            lengths,
            self.options.max_batch_tokens,
            self.options.infer_batch_size,
            self.options.sort_by_doc_length,
        )
        pinned = self.device.type == "cuda"
        outputs = []
        with torch.inference_mode():
            for batch in batches:
                width = max(lengths[i] for i in batch)
                inputs = {
                    "input_ids": _padded([ids[i] for i in batch], width, self.pad_id),
                    "attention_mask": (
                        torch.arange(width)[None, :]
                        < torch.tensor([lengths[i] for i in batch])[:, None]
                    ).long(),
                }
                if types is not None:
                    inputs["token_type_ids"] = _padded([types[i] for i in batch], width, 0)
                on_device = {
                    k: (v.pin_memory() if pinned else v).to(self.device, non_blocking=pinned)
                    for k, v in inputs.items()
                }
                outputs.append(self.model(**on_device).logits[:, 0])
            return batches, start_copy_to_host(torch, outputs, self.device)

    def close(self) -> None:
        """Free the model."""
        self.model = None


def _padded(rows: list[list[int]], width: int, pad: int) -> Any:
    """``rows`` right-padded with ``pad`` to ``width``, as one long tensor."""
    import torch

    return torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)
