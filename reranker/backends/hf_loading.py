"""Loading a tokenizer or model from a hub id or a local directory, with one clear error."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from reranker.backends.threaded_tokenize import encode_in_slices
from reranker.core.errors import ModelUnavailable
from reranker.core.model_source import check_model_source, hub_offline, offline_hint
from reranker.formats.user_text import cuts_exactly, encode_heads, plain_tokenizer

T = TypeVar("T")


def check_hub_model(options: Any) -> None:
    """``RerankBackend.check_model`` of backends that load a hub id or a local folder."""
    check_model_source(
        options.model_name, local_files_only=getattr(options, "local_files_only", False)
    )


def load_or_explain(model_name: str, what: str, load: Callable[[], T]) -> T:
    """Run ``load``; turn a missing model or a failed download into :class:`ModelUnavailable`."""
    try:
        return load()
    except (OSError, ValueError) as exc:
        local = Path(model_name).expanduser()
        if local.exists():
            raise ModelUnavailable(f"cannot load the {what} from {local}: {exc}") from exc
        why = (
            "HF_HUB_OFFLINE is set"
            if hub_offline()
            else "not a local directory, and the hub is unreachable or has no such model"
        )
        raise ModelUnavailable(
            f"cannot load the {what} of {model_name!r} ({why}). {offline_hint()}"
        ) from exc


class HFTextTokenizer:
    """A HF tokenizer as :class:`reranker.formats.qwen3_prompt.TextTokenizer` (no special tokens).

    Where the tokenizer is a fast one with no truncation or padding of its own set,
    texts go straight to its Rust ``encode_batch_fast``: the same ids, without the
    character offsets and the per-call bookkeeping of ``tokenizer(...)`` (~25% of the
    time tokenising a request takes).

    User text goes through :meth:`encode_text_batch`, which never recognises an added
    token and tokenises long texts only as far as they are used (:mod:`reranker.formats.user_text`).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        rust = getattr(tokenizer, "_tokenizer", None)
        plain = rust is not None and rust.truncation is None and rust.padding is None
        self._encode_fast = getattr(rust, "encode_batch_fast", None) if plain else None
        self._plain = plain_tokenizer(rust) if rust is not None else None
        self._cuts_exactly = rust is not None and cuts_exactly(rust)
        added: dict[str, int] = dict(tokenizer.get_added_vocab())
        self._added_ids = added
        # longest first: where two added tokens start at one place, the longer one wins
        by_length = sorted(added, key=len, reverse=True)
        self._added = re.compile("|".join(map(re.escape, by_length))) if added else None

    @property
    def releases_gil(self) -> bool:
        """Whether user text is encoded by the Rust tokenizer, which releases the GIL:
        then a long list is tokenised on several threads."""
        return self._plain is not None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (a long list on several threads with a Rust tokenizer:
        :mod:`reranker.backends.threaded_tokenize`)."""
        return encode_in_slices(self._encode_batch, texts, None if self._encode_fast else 1)

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._encode_fast is not None:
            return [e.ids for e in self._encode_fast(list(texts), add_special_tokens=False)]
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode_text_batch(
        self, texts: Sequence[str], max_tokens: int | None = None
    ) -> list[list[int]]:
        """Token ids of each user text, in which no added token (``<|im_end|>``, ...) is
        ever recognised: the ids of its characters instead. With ``max_tokens``, a text
        holding more tokens may come back cut after any ``k > max_tokens`` of them; the
        ids are always exactly a prefix of the whole text's ids. With a Rust tokenizer, a
        long list is tokenised on several threads (:mod:`reranker.backends.threaded_tokenize`)."""
        return encode_in_slices(
            lambda part: self._encode_text_slice(part, max_tokens),
            texts,
            None if self.releases_gil else 1,  # a Python tokenizer holds the GIL
        )

    def _encode_text_slice(self, texts: list[str], max_tokens: int | None) -> list[list[int]]:
        if self._plain is None:  # a slow tokenizer: its special tokens split as text
            return self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        if max_tokens is not None and self._cuts_exactly:
            return encode_heads(self._plain, texts, max_tokens)
        fast = getattr(self._plain, "encode_batch_fast", self._plain.encode_batch)
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def split_added_tokens(self, text: str) -> list[str | int]:
        """Template text as its pieces of plain text and the ids of the added tokens
        between them (as the tokenizer itself matches them: on the raw text, leftmost)."""
        if self._added is None:
            return [text] if text else []
        parts: list[str | int] = []
        start = 0
        for match in self._added.finditer(text):
            if match.start() > start:
                parts.append(text[start : match.start()])
            parts.append(self._added_ids[match.group()])
            start = match.end()
        if start < len(text):
            parts.append(text[start:])
        return parts

    def token_offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character ``(start, end)`` of each token of each user text, tokenised as
        :meth:`encode_text_batch` does (no added token recognised); where to cut
        documents into chunks (:mod:`reranker.core.chunking`)."""
        if self._plain is not None:
            encodings = self._plain.encode_batch(list(texts), add_special_tokens=False)
            return [list(e.offsets) for e in encodings]
        out = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [list(map(tuple, offsets)) for offsets in out["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept."""
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
