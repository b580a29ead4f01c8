"""The cross-encoder pair format: ``[CLS] query [SEP] document [SEP]`` as the model's own
tokenizer joins a text pair, read by a sequence-classification head with one label.

Families (from the checkpoint's ``config.json``, ``architectures``): BERT
(ms-marco MiniLM, bge-reranker-base/large style), XLM-RoBERTa (bge-reranker-v2-m3), ModernBERT
(gte-reranker-modernbert). Truncation cuts only the document, at a token boundary that
maps back to the document's own text; the query is never cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.core.errors import ConfigError, InvalidRequest

FAMILIES = {
    "BertForSequenceClassification": "bert",
    "XLMRobertaForSequenceClassification": "xlm-roberta",
    "RobertaForSequenceClassification": "roberta",
    "ModernBertForSequenceClassification": "modernbert",
}


@dataclass(frozen=True)
class CrossEncoderModel:
    """What the format needs to know of a checkpoint."""

    family: str
    architecture: str


def model_config(model_name: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (a local folder, else the hub or its cache)."""
    local = Path(model_name) / "config.json"
    if local.is_file():
        return dict(json.loads(local.read_text(encoding="utf-8")))
    from transformers import AutoConfig

    return dict(AutoConfig.from_pretrained(model_name).to_dict())


def detect(model_name: str) -> CrossEncoderModel:
    """The family of ``model_name``, or a :class:`ConfigError` naming what is served."""
    config = model_config(model_name)
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else "(none)"
    family = FAMILIES.get(architecture)
    if family is None:
        raise ConfigError(
            f"{model_name} is a {architecture}; the cross-encoder backends serve "
            f"{', '.join(sorted(FAMILIES))} checkpoints (Qwen3-Reranker: the qwen3_* backends)"
        )
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        raise ConfigError(
            f"{model_name} has {labels} labels; a reranker's classification head has one"
        )
    return CrossEncoderModel(family, architecture)


def pair_limit(tokenizer: Any, max_model_len: int) -> int:
    """The longest pair in tokens: ``max_model_len``, at most the model's own limit."""
    own = getattr(tokenizer, "model_max_length", None)
    if isinstance(own, int) and 0 < own < 1_000_000:
        return min(max_model_len, own)
    return max_model_len


def encode_pairs(
    tokenizer: Any, query: str, docs: list[str], max_len: int, max_doc_tokens: int | None
) -> tuple[list[list[int]], list[list[int]] | None, int]:
    """``(input_ids, token_type_ids or None, truncated documents)`` of each
    (query, document) pair, as ``tokenizer(query, doc)`` joins them, each pair at most
    ``max_len`` tokens and each document at most ``max_doc_tokens`` (a document is cut
    at a token boundary of its own text; the query is never cut)."""
    query_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
    room = max_len - query_len - tokenizer.num_special_tokens_to_add(pair=True)
    if room < 1:
        raise InvalidRequest(
            f"the query takes {query_len} tokens, leaving no room for a document within "
            f"max_model_len ({max_len} tokens a pair)",
            param="query",
        )
    keep = room if max_doc_tokens is None else min(room, max_doc_tokens)
    # Whole documents, to find where to cut them: longer than the model takes, by design.
    alone = tokenizer(docs, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    cut: list[str] = []
    truncated = 0
    for doc, ids, offsets in zip(docs, alone["input_ids"], alone["offset_mapping"], strict=True):
        if len(ids) > keep:
            truncated += 1
            doc = doc[: offsets[keep - 1][1]]
        cut.append(doc)
    encoded = tokenizer([query] * len(cut), cut, truncation="only_second", max_length=max_len)
    types = encoded.get("token_type_ids")
    return list(encoded["input_ids"]), (list(types) if types is not None else None), truncated
