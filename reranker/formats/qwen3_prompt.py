"""The Qwen3-Reranker prompt: layouts, the yes/no token ids, and truncation.

A pair is encoded as ``query part + document part + tail``:

- query part: ``{prefix}<Instruct>: {instruction}\\n<Query>: {query}\\n`` (standard);
- document part: ``<Document>: {doc}``, the only part truncation ever shortens;
- tail: the suffix ``<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``.

The three parts are tokenised separately and concatenated. Each boundary is a place
where Qwen's pre-tokeniser always splits (after a run of newlines; before a special
token), so the ids equal those of tokenising the whole prompt at once, as the model card
does, while the query part is tokenised once per request instead of once per document.

User text (query, instruction, document) never becomes a control token: only the
template's own text is searched for added tokens (``<|im_start|>``, ``<think>``, ...);
the text between them, user text included, is tokenised as plain text
(``TextTokenizer.encode_text_batch``). A document holding ``<|im_end|>`` is scored as
those characters, not as the end of the user turn. For text holding no added token's
string the ids are the model card's.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from reranker.core.errors import InvalidRequest

YES_TOKEN_ID = 9693
NO_TOKEN_ID = 2152

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

STANDARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
    'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
    "<|im_end|>\n<|im_start|>user\n"
)
STANDARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
STANDARD_QUERY_TEMPLATE = "{prefix}<Instruct>: {instruction}\n<Query>: {query}\n"
STANDARD_DOCUMENT_TEMPLATE = "<Document>: {doc}{suffix}"

# The older "compact" layout: the instruction is the system message and is repeated
# in the user turn; a blank line separates the blocks.
COMPACT_PREFIX = "<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n"
COMPACT_QUERY_TEMPLATE = "{prefix}<Instruct>: {instruction}\n\n<Query>: {query}\n\n"
COMPACT_DOCUMENT_TEMPLATE = "<Document>: {doc}{suffix}"

InstructionFormat = Literal["standard", "compact"]


class TextTokenizer(Protocol):
    """What the encoder needs of a tokenizer (see ``reranker.backends.hf_loading``)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added (added tokens recognised)."""
        ...

    def encode_text_batch(
        self, texts: Sequence[str], max_tokens: int | None = None
    ) -> list[list[int]]:
        """Token ids of each text with no added token recognised; with ``max_tokens``, a
        longer text may come back as any prefix of its ids longer than ``max_tokens``."""
        ...

    def split_added_tokens(self, text: str) -> list[str | int]:
        """``text``'s plain pieces and, between them, the ids of its added tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        ...


_QUERY_FIELDS = {"prefix", "instruction", "query"}
_DOCUMENT_FIELDS = {"doc", "suffix"}


def _placeholders(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check_template(template: str, allowed: set[str], required: str, what: str) -> None:
    try:
        names = _placeholders(template)
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid template: {exc}") from exc
    unknown = sorted(set(names) - allowed)
    fields = [f for f in string.Formatter().parse(template) if f[1] is not None]
    if any(spec or conversion for _, _, spec, conversion in fields):
        raise ValueError(f"{what}: placeholders take no format spec or conversion")
    if unknown:
        raise ValueError(
            f"{what} uses unknown placeholder(s) {unknown}; allowed: {sorted(allowed)}"
        )
    if names.count(required) != 1:
        raise ValueError(f"{what} must contain {{{required}}} exactly once")


@dataclass(frozen=True)
class Qwen3PromptTemplate:
    """A validated prompt layout (see the module docstring)."""

    prefix: str
    suffix: str
    query_template: str
    document_template: str
    instruction_format: InstructionFormat = "standard"

    @classmethod
    def build(
        cls,
        instruction_format: InstructionFormat = "standard",
        prefix: str | None = None,
        suffix: str | None = None,
        query_template: str | None = None,
        document_template: str | None = None,
    ) -> Qwen3PromptTemplate:
        """Fill unset parts from the chosen layout and validate the templates."""
        if instruction_format not in ("standard", "compact"):
            raise ValueError(
                f"instruction_format must be 'standard' or 'compact', got {instruction_format!r}"
            )
        compact = instruction_format == "compact"
        template = cls(
            prefix=prefix or (COMPACT_PREFIX if compact else STANDARD_PREFIX),
            suffix=suffix or STANDARD_SUFFIX,
            query_template=query_template
            or (COMPACT_QUERY_TEMPLATE if compact else STANDARD_QUERY_TEMPLATE),
            document_template=document_template
            or (COMPACT_DOCUMENT_TEMPLATE if compact else STANDARD_DOCUMENT_TEMPLATE),
            instruction_format=instruction_format,
        )
        _check_template(template.query_template, _QUERY_FIELDS, "query", "query_template")
        _check_template(template.document_template, _DOCUMENT_FIELDS, "doc", "document_template")
        return template

    def query_parts(self, query: str, instruction: str) -> list[tuple[str, bool]]:
        """The query part of the prompt, prefix included, as ``(text, is_user_text)``
        pieces in order: the template's own text, and the query and instruction."""
        parts: list[tuple[str, bool]] = []
        for literal, name, _, _ in string.Formatter().parse(self.query_template):
            if literal:
                parts.append((literal, False))
            if name == "prefix":
                # split(), not format(): a user's prefix may hold literal braces.
                for k, piece in enumerate(self.prefix.split("{instruction}")):
                    if k:
                        parts.append((instruction, True))
                    if piece:
                        parts.append((piece, False))
            elif name is not None:
                parts.append((query if name == "query" else instruction, True))
        return parts

    def query_text(self, query: str, instruction: str) -> str:
        """The query part of the prompt, prefix included."""
        return "".join(text for text, _ in self.query_parts(query, instruction))

    def document_lead_and_tail(self) -> tuple[str, str]:
        """The document template's text before ``{doc}`` and after it (suffix filled in)."""
        lead, tail = self.document_template.split("{doc}")
        return lead.replace("{suffix}", self.suffix), tail.replace("{suffix}", self.suffix)

    def prompt_text(self, query: str, doc: str, instruction: str) -> str:
        """The whole prompt as one string (no truncation): for logging and tests."""
        lead, tail = self.document_lead_and_tail()
        return self.query_text(query, instruction) + lead + doc + tail


@dataclass(frozen=True)
class EncodedPairs:
    """Token ids of one query against many documents."""

    query_ids: list[int]
    doc_ids: list[list[int]]  # document part ("<Document>: " + doc), already truncated
    tail_ids: list[int]
    truncated: list[bool]
    doc_texts: list[str]  # each document as scored: the truncated text where cut

    def prompt_ids(self, i: int) -> list[int]:
        """Full prompt ids of pair ``i``."""
        return self.query_ids + self.doc_ids[i] + self.tail_ids

    def lengths(self) -> list[int]:
        """Prompt length of every pair, in tokens."""
        fixed = len(self.query_ids) + len(self.tail_ids)
        return [fixed + len(d) for d in self.doc_ids]


class Qwen3PromptEncoder:
    """Turns (query, docs) into prompt token ids that fit ``max_length``.

    A document is cut where its kept text re-tokenises to exactly the kept ids (one
    token earlier when the cut would split a character or a merge), so the truncated
    text in ``doc_texts``, given to any text-based engine, scores the same tokens. A
    long document is tokenised only as far as it can be kept (``encode_text_batch``
    with ``max_tokens``), with the same ids as tokenising it whole and cutting.
    """

    def __init__(self, template: Qwen3PromptTemplate, tokenizer: TextTokenizer, max_length: int):
        self.template = template
        self.max_length = max_length
        self._tokenizer = tokenizer
        lead, tail = template.document_lead_and_tail()
        # The document part: the lead's added tokens and the text before them, then the
        # lead's remaining text and the document, tokenised together as plain text.
        parts = tokenizer.split_added_tokens(lead)
        last = max((k for k, p in enumerate(parts) if isinstance(p, int)), default=-1)
        self._lead_ids = self._encode_parts([(p, False) for p in parts[: last + 1]])
        self._lead = "".join(p for p in parts[last + 1 :] if isinstance(p, str))
        self._lead_text_len = len(tokenizer.encode_text_batch([self._lead])[0]) if self._lead else 0
        self._lead_len = len(self._lead_ids) + self._lead_text_len
        self._tail_ids = self._encode_parts([(tail, False)])
        for text in (template.query_text("", ""), lead, tail):
            if self._encode_parts([(text, False)]) != (
                tokenizer.encode_batch([text])[0] if text else []
            ):
                raise ValueError(
                    f"the prompt template's text {text!r} does not tokenise the same split "
                    "at its added tokens: this tokenizer matches added tokens differently"
                )

    @property
    def releases_gil(self) -> bool:
        """Whether its tokenizer encodes without the GIL (a Rust one), so that several
        requests tokenised on threads run at once."""
        return bool(getattr(self._tokenizer, "releases_gil", False))

    def _encode_parts(self, parts: Sequence[tuple[str | int, bool]]) -> list[int]:
        """Ids of ``(text, is_user_text)`` pieces: added tokens are looked for in the
        template's text only; all text between them is tokenised as plain text."""
        segments: list[str | int] = []
        text = ""
        for piece, user in parts:
            if isinstance(piece, int):
                pieces: list[str | int] = [piece]
            else:
                pieces = [piece] if user else self._tokenizer.split_added_tokens(piece)
            for p in pieces:
                if isinstance(p, str):
                    text += p
                    continue
                if text:
                    segments.append(text)
                    text = ""
                segments.append(p)
        if text:
            segments.append(text)
        texts = [p for p in segments if isinstance(p, str)]
        encoded = iter(self._tokenizer.encode_text_batch(texts) if texts else [])
        ids: list[int] = []
        for p in segments:
            ids += [p] if isinstance(p, int) else next(encoded)
        return ids

    def encode(
        self,
        query: str,
        docs: Sequence[str],
        instruction: str,
        max_doc_tokens: int | None = None,
    ) -> EncodedPairs:
        """Tokenise and truncate. Only the document is ever shortened.

        Raises :class:`InvalidRequest` when the query part alone leaves no room for a
        document within ``max_length``.
        """
        query_ids = self._encode_parts(self.template.query_parts(query, instruction))
        room = self.max_length - len(query_ids) - len(self._tail_ids)
        if room < self._lead_len + 1:
            raise InvalidRequest(
                f"query and instruction take {len(query_ids)} tokens of max_model_len "
                f"{self.max_length} (template tail {len(self._tail_ids)}), leaving no room for "
                "a document: shorten the query or raise max_model_len",
                param="query",
            )
        if max_doc_tokens is not None:
            room = min(room, self._lead_len + max_doc_tokens)
        text_room = room - len(self._lead_ids)
        text_ids = (
            self._tokenizer.encode_text_batch([self._lead + d for d in docs], text_room)
            if docs
            else []
        )
        truncated = [len(ids) > text_room for ids in text_ids]
        texts = list(docs)
        cut = [i for i, long in enumerate(truncated) if long]
        heads = self._cut([text_ids[i][:text_room] for i in cut])
        for i, (ids, text) in zip(cut, heads, strict=True):
            text_ids[i], texts[i] = ids, text
        return EncodedPairs(
            query_ids=query_ids,
            doc_ids=[self._lead_ids + ids for ids in text_ids],
            tail_ids=list(self._tail_ids),
            truncated=truncated,
            doc_texts=texts,
        )

    def _cut(self, heads: list[list[int]]) -> list[tuple[list[int], str]]:
        """For each of ``heads`` (the lead's text + a document, cut), the longest prefix
        whose text round-trips, and that text (lead removed); one tokenizer call a round
        for all of them."""
        out: list[tuple[list[int], str]] = [([], "")] * len(heads)
        pending = [(k, ids) for k, ids in enumerate(heads)]
        while pending:
            for k, ids in pending:
                if len(ids) <= self._lead_text_len:
                    out[k] = (ids, "")
            pending = [(k, ids) for k, ids in pending if len(ids) > self._lead_text_len]
            texts = [self._tokenizer.decode(ids) for _, ids in pending]
            again = []
            encoded = self._tokenizer.encode_text_batch(texts) if texts else []
            for (k, ids), text, back in zip(pending, texts, encoded, strict=True):
                if text.startswith(self._lead) and back == ids:
                    out[k] = (ids, text[len(self._lead) :])
                else:
                    again.append((k, ids[:-1]))
            pending = again
        return out
