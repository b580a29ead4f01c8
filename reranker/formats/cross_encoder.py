"""The cross-encoder pair formats, read by a sequence-classification head with one label.

Families (from the checkpoint's ``config.json``, ``architectures``, or the ``family``
option): BERT (ms-marco MiniLM, bge-reranker-base/large style), XLM-RoBERTa
(bge-reranker-v2-m3), RoBERTa, ModernBERT (gte-reranker-modernbert) read
``[CLS] query [SEP] document [SEP]`` as the model's own tokenizer joins a text pair
(:class:`TextPairEncoder`); a Qwen3-Reranker converted to a sequence classifier
(``Qwen3ForSequenceClassification``, e.g. Qwen3-Reranker-0.6B-seq-cls) reads the
Qwen3-Reranker prompt, an instruction included, at its last token
(:class:`Qwen3PairEncoder`). Truncation cuts only the document; the query is never cut.
A text pair keeps the document's first tokens, exactly as the tokenizer's own pair
encoding truncates it (``truncation="only_second"``, the reference recipe of these
models), yet a long document is tokenised only as far as it is kept and the pair is
joined from the ids (:class:`FastPairs`), never tokenised twice.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from reranker.core.errors import ConfigError, InvalidRequest
from reranker.core.protocol import PairScores
from reranker.formats.qwen3_prompt import Qwen3PromptEncoder
from reranker.formats.user_text import cuts_at_spaces, encode_heads, space_cut

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


@dataclass(frozen=True)
class PairLayout:
    """How a tokenizer joins a text pair: ``before + A + between + B + after`` (special
    tokens around the query's ids A and the document's ids B), each part's token types."""

    before: list[int]
    between: list[int]
    after: list[int]
    before_types: list[int]
    between_types: list[int]
    after_types: list[int]
    a_type: int
    b_type: int

    @property
    def specials(self) -> int:
        """Special tokens a pair takes."""
        return len(self.before) + len(self.between) + len(self.after)

    def join(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        """The ids and token types of the pair ``(a, b)``."""
        ids = self.before + a + self.between + b + self.after
        types = (
            self.before_types
            + [self.a_type] * len(a)
            + self.between_types
            + [self.b_type] * len(b)
            + self.after_types
        )
        return ids, types

    @classmethod
    def of(cls, rust: Any) -> PairLayout | None:
        """The layout of ``rust``'s pairs (a ``tokenizers.Tokenizer``, neither truncating
        nor padding), read off its own encoding of sample pairs; None where its pairs are
        not such a join."""

        def parts(a_text: str, b_text: str) -> tuple[Any, Any, Any]:
            a = rust.encode(a_text, add_special_tokens=False)
            b = rust.encode(b_text, add_special_tokens=False)
            return a.ids, b.ids, rust.encode(a_text, b_text, add_special_tokens=True)

        a, b, pair = parts("query", "document text")
        ids, types = list(pair.ids), list(pair.type_ids)
        layout = None
        for i in range(len(ids) - len(a) + 1):
            if ids[i : i + len(a)] != a:
                continue
            for j in range(i + len(a), len(ids) - len(b) + 1):
                if ids[j : j + len(b)] != b:
                    continue
                a_types, b_types = set(types[i : i + len(a)]), set(types[j : j + len(b)])
                if len(a_types) != 1 or len(b_types) != 1:
                    continue
                layout = cls(
                    ids[:i], ids[i + len(a) : j], ids[j + len(b) :],
                    types[:i], types[i + len(a) : j], types[j + len(b) :],
                    a_types.pop(), b_types.pop(),
                )  # fmt: skip
                break
            if layout is not None:
                break
        if layout is None:
            return None
        # Check it on a pair of other lengths.
        a, b, pair = parts("a longer query, of several words", "x")
        if layout.join(a, b) != (list(pair.ids), list(pair.type_ids)):
            return None
        return layout


class FastPairs:
    """Text pairs on a fast tokenizer's Rust ``tokenizers.Tokenizer``: the query tokenised
    once, each document only as far as it is kept (:func:`encode_heads` at a
    :func:`space_cut`, for tokenizers :func:`cuts_at_spaces` accepts; else whole, in one
    batched call), the pair joined as the tokenizer's own post-processor joins it. The ids
    are those of ``tokenizer(query, doc, truncation="only_second", max_length=...)``."""

    def __init__(self, rust: Any, layout: PairLayout, typed: bool) -> None:
        self.rust = rust
        self.layout = layout
        self.typed = typed  # whether the model reads token types (the tokenizer returns them)
        self.windows = cuts_at_spaces(rust)

    @classmethod
    def of(cls, tokenizer: Any) -> FastPairs | None:
        """For a HF fast tokenizer (a copy of its Rust tokenizer without truncation and
        padding, so that ``tokenizer``'s own calls never change it); None for another."""
        rust = getattr(tokenizer, "_tokenizer", None)
        if rust is None or not hasattr(rust, "encode_batch_fast"):
            return None
        rust = copy.deepcopy(rust)
        rust.no_truncation()
        rust.no_padding()
        layout = PairLayout.of(rust)
        if layout is None:
            return None
        return cls(rust, layout, "token_type_ids" in getattr(tokenizer, "model_input_names", ()))

    def query_ids(self, query: str) -> list[int]:
        """The query's ids, no special tokens."""
        return list(self.rust.encode(query, add_special_tokens=False).ids)

    def doc_heads(self, docs: list[str], keep: int) -> list[list[int]]:
        """Each document's ids, or for one of more than ``keep`` tokens, at least its first
        ``keep + 1`` ids: a prefix of the whole text's ids."""
        if self.windows:
            return encode_heads(self.rust, docs, keep, cut=space_cut)
        return [list(e.ids) for e in self.rust.encode_batch_fast(docs, add_special_tokens=False)]


def _room(query_len: int, specials: int, max_len: int, max_doc_tokens: int | None) -> int:
    """Document tokens a pair keeps (:class:`InvalidRequest` when the query leaves none)."""
    room = max_len - query_len - specials
    if room < 1:
        raise InvalidRequest(
            f"the query takes {query_len} tokens, leaving no room for a document within "
            f"max_model_len ({max_len} tokens a pair)",
            param="query",
        )
    return room if max_doc_tokens is None else min(room, max_doc_tokens)


def encode_pairs(
    tokenizer: Any,
    query: str,
    docs: list[str],
    max_len: int,
    max_doc_tokens: int | None,
    fast: FastPairs | None = None,
) -> tuple[list[list[int]], list[list[int]] | None, int]:
    """``(input_ids, token_type_ids or None, truncated documents)`` of each
    (query, document) pair, as ``tokenizer(query, doc)`` joins them, each pair at most
    ``max_len`` tokens and each document at most ``max_doc_tokens`` (only the document is
    cut, to its first tokens: ``truncation="only_second"``). With ``fast``
    (:meth:`FastPairs.of` the same tokenizer) long documents are tokenised only as far as
    they are kept, and pairs are joined without tokenising them again."""
    if fast is None:
        query_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        keep = _room(query_len, specials, max_len, max_doc_tokens)
        alone = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
        truncated = sum(len(ids) > keep for ids in alone)
        encoded = tokenizer(
            [query] * len(docs),
            docs,
            truncation="only_second",
            max_length=query_len + specials + keep,
            verbose=False,
        )
        given = encoded.get("token_type_ids")
        return list(encoded["input_ids"]), (list(given) if given is not None else None), truncated
    query_ids = fast.query_ids(query)
    keep = _room(len(query_ids), fast.layout.specials, max_len, max_doc_tokens)
    ids: list[list[int]] = []
    types: list[list[int]] = []
    truncated = 0
    for head in fast.doc_heads(docs, keep):
        if len(head) > keep:
            truncated += 1
            head = head[:keep]
        pair, kinds = fast.layout.join(query_ids, head)
        ids.append(pair)
        types.append(kinds)
    return ids, (types if fast.typed else None), truncated


@dataclass(frozen=True)
class PairIds:
    """The token ids of one query's (query, document) pairs, as the model reads them."""

    ids: list[list[int]]
    types: list[list[int]] | None  # token type ids, where the model takes them
    truncated: int  # documents cut to fit


def split_scores(
    encoded: list[PairIds | InvalidRequest],
    logits: list[float],
    batches: Callable[[int, int], int],
) -> list[PairScores | InvalidRequest]:
    """Each job's :class:`PairScores` from the logits of all jobs' pairs in order (a
    job that failed to encode keeps its error); ``batches(start, end)``: the backend
    calls that rows ``start:end`` took."""
    results: list[PairScores | InvalidRequest] = []
    start = 0
    for item in encoded:
        if isinstance(item, InvalidRequest):
            results.append(item)
            continue
        end = start + len(item.ids)
        results.append(
            PairScores(
                logits[start:end],
                batches=batches(start, end),
                tokens=sum(map(len, item.ids)),
                truncated_docs=item.truncated,
            )
        )
        start = end
    return results


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
        self.fast = FastPairs.of(tokenizer)

    def encode(
        self, query: str, docs: list[str], instruction: str | None, max_doc_tokens: int | None
    ) -> PairIds:
        """The pairs' ids and token types (the protocol refuses an instruction first)."""
        if instruction is not None:
            raise InvalidRequest("this model takes no instruction", param="instruction")
        ids, types, truncated = encode_pairs(
            self.tokenizer, query, docs, self.max_len, max_doc_tokens, self.fast
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
