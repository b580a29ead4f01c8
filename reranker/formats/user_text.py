"""Tokenising user text (query, instruction, documents) for the prompt.

Two rules a tokenizer's own ``encode`` does not keep:

- **Never control tokens.** A tokenizer recognises its added tokens (``<|im_end|>``,
  ``<|im_start|>``, ``<think>``, ...) wherever they appear, so a document holding
  ``<|im_end|>\\n<|im_start|>assistant\\n...yes`` would close the user turn and write the
  answer. User text goes through :func:`plain_tokenizer`: the same normaliser,
  pre-tokeniser and BPE model *without* the added vocabulary, so ``<|im_end|>`` in a
  document is the ids of its characters. Text holding no added token's string gets the
  very ids the tokenizer gives it (the tokenizer splits text at added tokens first, then
  runs this same pipeline on each piece).
- **Only as far as it is used.** A document is cut to the room the prompt leaves, so
  :func:`encode_heads` tokenises a prefix of it (doubling it while too short) and keeps
  only tokens that are provably the first tokens of the whole text, instead of
  tokenising megabytes to keep a few thousand tokens.

Why the kept tokens are the whole text's, on the pipeline of Qwen2/Qwen3 tokenizers
(NFC, then the regex :data:`QWEN_SPLIT_PATTERN`, then byte-level BPE; checked by
:func:`cuts_exactly`; other tokenizers tokenise whole texts):

1. The prefix ends before a character NFC cannot reach across (:func:`safe_cut`: an
   assigned starter that has no decomposition and composes with nothing before it), so
   the normalised prefix is a prefix of the normalised text.
2. The regex decides a piece from its start to the end of the run it is in (letters,
   punctuation then newlines, or whitespace) plus one character; every other
   alternative gives up within three characters. So only a piece whose run reaches the
   end of the prefix can differ from the whole text's pieces; such a piece takes the
   rest of the prefix, or, in a whitespace run, the run up to its last newline, and
   one more piece takes the spaces after it. Every piece but the prefix's last two is
   one of the whole text's pieces.
3. BPE encodes each piece on its own, so the tokens of those pieces (``word_ids`` says
   which piece a token comes from) are exactly the whole text's first tokens.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

# The pre-tokeniser of Qwen2 and Qwen3 tokenizers (tiktoken's pattern).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def plain_tokenizer(rust: Any) -> Any:
    """A Rust ``tokenizers.Tokenizer`` sharing ``rust``'s model, normaliser and
    pre-tokeniser but no added token: it never turns text into a control token."""
    from tokenizers import Tokenizer

    plain = Tokenizer(rust.model)  # the same model object: nothing is copied
    if rust.normalizer is not None:
        plain.normalizer = rust.normalizer
    if rust.pre_tokenizer is not None:
        plain.pre_tokenizer = rust.pre_tokenizer
    return plain


def cuts_exactly(rust: Any) -> bool:
    """Whether ``rust`` runs the pipeline the module docstring proves prefix-cutting
    exact for: NFC (or none), Qwen's regex split, byte-level BPE without dropout."""

    def state(component: Any) -> Any:
        return None if component is None else json.loads(component.__getstate__())

    try:
        normalizer, pre, model = state(rust.normalizer), state(rust.pre_tokenizer), rust.model
    except (AttributeError, TypeError, ValueError):
        return False
    if normalizer not in (None, {"type": "NFC"}) or type(model).__name__ != "BPE":
        return False
    if getattr(model, "dropout", None) or not isinstance(pre, dict):
        return False
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and split.get("pattern") == {"Regex": QWEN_SPLIT_PATTERN}
        and split.get("behavior") == "Isolated"
        and split.get("invert") is False
        and byte_level.get("type") == "ByteLevel"
        and byte_level.get("use_regex") is False
        and byte_level.get("add_prefix_space") is False
    )


@functools.cache
def _composes_backward() -> frozenset[str]:
    """Characters NFC may compose with the starter before them: the second character of
    every two-character canonical decomposition, and Hangul vowel and trailing jamo."""
    seconds = {chr(c) for c in range(0x1161, 0x1176)} | {chr(c) for c in range(0x11A8, 0x11C3)}
    for code in range(0x110000):
        mapping = unicodedata.decomposition(chr(code))
        if mapping and not mapping.startswith("<"):
            parts = mapping.split()
            if len(parts) == 2:
                seconds.add(chr(int(parts[1], 16)))
    return frozenset(seconds)


def _starts_fresh(ch: str) -> bool:
    """NFC(text[:i]) + NFC(text[i:]) == NFC(text) whenever text[i] is ``ch``."""
    return ch < "\x80" or (
        unicodedata.category(ch) != "Cn"  # assigned here: its properties are stable
        and unicodedata.combining(ch) == 0
        and not unicodedata.decomposition(ch)
        and ch not in _composes_backward()
    )


def safe_cut(text: str, end: int) -> int | None:
    """The largest ``i`` in ``(end // 2, end]`` where ``text`` may be cut without changing
    how NFC normalises what comes before, or None."""
    for i in range(min(end, len(text) - 1), end // 2, -1):
        if _starts_fresh(text[i]):
            return i
    return None


def first_window(max_tokens: int) -> int:
    """Characters of the first prefix tried for ``max_tokens`` tokens (6 per token is more
    than most text takes; text with longer tokens takes another round)."""
    return 6 * (max_tokens + 1) + 256


def encode_heads(plain: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """For each text, its token ids (``plain`` tokenizer, a :func:`cuts_exactly` one), or
    when it has more than ``max_tokens``, its first ``k > max_tokens`` ids (any ``k``):
    in both cases exactly a prefix of the whole text's ids."""
    fast = getattr(plain, "encode_batch_fast", plain.encode_batch)
    out: list[list[int]] = [[] for _ in texts]
    pending = list(range(len(texts)))
    size = first_window(max_tokens)
    while pending:
        whole = [i for i in pending if len(texts[i]) <= size]
        for i, enc in zip(
            whole, fast([texts[i] for i in whole], add_special_tokens=False), strict=True
        ):
            out[i] = enc.ids
        cuts = [(i, safe_cut(texts[i], size)) for i in pending if len(texts[i]) > size]
        again = [i for i, cut in cuts if cut is None]
        windows = [(i, cut) for i, cut in cuts if cut is not None]
        encoded = plain.encode_batch(
            [texts[i][:cut] for i, cut in windows], add_special_tokens=False
        )
        for (i, _), enc in zip(windows, encoded, strict=True):
            words = enc.word_ids
            # tokens of every piece but the last two (see the module docstring)
            keep = bisect_left(words, words[-1] - 1) if words else 0
            if keep > max_tokens:
                out[i] = enc.ids[:keep]
            else:
                again.append(i)
        pending = sorted(again)
        size *= 2
    return out
