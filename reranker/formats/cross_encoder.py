"""The cross-encoder pair formats, read by a sequence-classification head with one label.

Families (from the checkpoint's ``config.json``, ``architectures``, or the ``family``
option): BERT (ms-marco MiniLM, bge-reranker-base/large style), XLM-RoBERTa
(bge-reranker-v2-m3), RoBERTa, ModernBERT (gte-reranker-modernbert) read
``[CLS] query [SEP] document [SEP]`` as the model's own tokenizer joins a text pair
(:class:`TextPairEncoder`); a Qwen3-Reranker converted to a sequence classifier
(``Qwen3ForSequenceClassification``, e.g. Qwen3-Reranker-0.6B-seq-cls) reads the
Qwen3-Reranker prompt, an instruction included, at its last token
(:class:`Qwen3PairEncoder`). Truncation cuts only the document, at a token boundary that
maps back to the document's own text; the query is never cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from reranker.core.errors import ConfigError, InvalidRequest
from reranker.formats.qwen3_prompt import Qwen3PromptEncoder

QWEN3_SEQ_CLS = "qwen3-seq-cls"
FAMILIES = {
    "BertForSequenceClassification": "bert",
    "XLMRobertaForSequenceClassification": "xlm-roberta",
    "RobertaForSequenceClassification": "roberta",
    "ModernBertForSequenceClassification": "modernbert",
    "Qwen3ForSequenceClassification": QWEN3_SEQ_CLS,
}
# The families whose checkpoints read the Qwen3-Reranker prompt (and so an instruction).
QWEN3_PROMPT_FAMILIES = frozenset({QWEN3_SEQ_CLS})
FamilyName = Literal["auto", "bert", "xlm-roberta", "roberta", "modernbert", "qwen3-seq-cls"]


@dataclass(frozen=True)
class CrossEncoderModel:
    """What the format needs to know of a checkpoint."""

    family: str
    architecture: str

    @property
    def reads_qwen3_prompt(self) -> bool:
        """Whether the model reads the Qwen3-Reranker prompt (an instruction included)."""
        return self.family in QWEN3_PROMPT_FAMILIES


def model_config(model_name: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (a local folder, else the hub or its cache)."""
    local = Path(model_name) / "config.json"
    if local.is_file():
        return dict(json.loads(local.read_text(encoding="utf-8")))
    from transformers import AutoConfig

    return dict(AutoConfig.from_pretrained(model_name).to_dict())


def detect(model_name: str, family: str = "auto") -> CrossEncoderModel:
    """The family of ``model_name``: read from its ``architectures`` (``family`` auto) or
    as named, which decides the pair format of any sequence classifier with one label.
    Anything else is a :class:`ConfigError` naming what is served."""
    config = model_config(model_name)
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else "(none)"
    if family == "auto":
        found = FAMILIES.get(architecture)
        if found is None:
            raise ConfigError(
                f"{model_name} is a {architecture}; the cross-encoder backends serve "
                f"{', '.join(sorted(FAMILIES))} checkpoints (Qwen3-Reranker: the qwen3_* "
                "backends; another sequence classifier: set the family option)"
            )
        family = found
    elif family not in FAMILIES.values():
        raise ConfigError(
            f"unknown family {family!r}; expected auto or one of "
            f"{', '.join(sorted(set(FAMILIES.values())))}"
        )
    elif not architecture.endswith("ForSequenceClassification"):
        raise ConfigError(
            f"{model_name} is a {architecture}, not a sequence classifier: the family option "
            "chooses the pair format of a classifier, it does not make one"
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


@dataclass(frozen=True)
class PairIds:
    """The token ids of one query's (query, document) pairs, as the model reads them."""

    ids: list[list[int]]
    types: list[list[int]] | None  # token type ids, where the model takes them
    truncated: int  # documents cut to fit


class PairEncoder(Protocol):
    """Builds the pairs of one query and its documents for a family's model."""

    def encode(
        self, query: str, docs: list[str], instruction: str | None, max_doc_tokens: int | None
    ) -> PairIds:
        """The pairs' ids; :class:`InvalidRequest` when the query leaves no room."""
        ...


class TextPairEncoder:
    """The text-pair families: ``tokenizer(query, doc)`` (:func:`encode_pairs`); such a
    model reads no instruction."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len

    def encode(
        self, query: str, docs: list[str], instruction: str | None, max_doc_tokens: int | None
    ) -> PairIds:
        """The pairs' ids and token types (the protocol refuses an instruction first)."""
        if instruction is not None:
            raise InvalidRequest("this model takes no instruction", param="instruction")
        ids, types, truncated = encode_pairs(
            self.tokenizer, query, docs, self.max_len, max_doc_tokens
        )
        return PairIds(ids, types, truncated)


class Qwen3PairEncoder:
    """A Qwen3-Reranker sequence classifier: the Qwen3-Reranker prompt of each pair
    (:class:`~reranker.formats.qwen3_prompt.Qwen3PromptEncoder`: instruction, query and
    document in its chat layout, only the document cut, user text never a control
    token), read at its last token; no token types."""

    def __init__(self, encoder: Qwen3PromptEncoder) -> None:
        self.encoder = encoder

    def encode(
        self, query: str, docs: list[str], instruction: str | None, max_doc_tokens: int | None
    ) -> PairIds:
        """The prompts' ids (``instruction``: the request's, or the default)."""
        if instruction is None:
            raise TypeError("a Qwen3 prompt needs an instruction")
        enc = self.encoder.encode(query, docs, instruction, max_doc_tokens)
        ids = [enc.prompt_ids(i) for i in range(len(docs))]
        return PairIds(ids, None, sum(enc.truncated))

    def last_token(self) -> int:
        """The id every prompt ends with (the template's last token)."""
        return self.encoder.encode("q", ["d"], "i").prompt_ids(0)[-1]
