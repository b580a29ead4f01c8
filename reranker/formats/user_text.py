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

The text-pair cross-encoders (BERT WordPiece, XLM-R SentencePiece, byte-level BPE) keep
their tokenizer's added tokens, as their reference recipe does, and tokenise a long
document's prefix the same way, ending it before a space that follows a non-space
character (:func:`space_cut`) on the tokenizers :func:`cuts_at_spaces` accepts:

- every normaliser accepted there rewrites text locally (character by character,
  canonical reordering, which stops at a space, runs of spaces), so the prefix
  normalises as the whole text does, but perhaps in its last piece;
- every pre-tokeniser accepted ends a piece at such a space (it splits on whitespace, or
  on Metaspace's word marks, or by a GPT-2 style regex, whose pieces hold no space after
  a non-space character), and its later steps work piece by piece;
- no added token holds whitespace, so none is matched across the space;
- every model encodes a piece on its own.

Whatever the cut changes is in the prefix's last pieces, which are dropped as above.
Other pipelines (Metaspace without splitting, an unknown regex, BPE dropout) tokenise
documents whole.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from bisect import bisect_left
from collections.abc import Callable, Sequence
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


def space_cut(text: str, end: int) -> int | None:
    """The largest ``i`` in ``(end // 2, end]`` where ``text[i]`` is a space that follows a
    character other than whitespace, or None: a prefix :func:`cuts_at_spaces` tokenizers
    may end with."""
    i = text.rfind(" ", end // 2 + 1, end + 1)
    while i > end // 2:
        if not text[i - 1].isspace():
            return i
        i = text.rfind(" ", end // 2 + 1, i)
    return None


# The normalisers, pre-tokenisers and models whose effects stay local to a space cut (see
# the module docstring); with anything else texts are tokenised whole.
_LOCAL_NORMALIZERS = frozenset(
    {"BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Strip",
     "Prepend", "Precompiled", "Nmt"}
)  # fmt: skip
_SPACE_RUNS = ({"Regex": " {2,}"}, {"String": "  "})
# Pre-tokenisers ending a piece at every space after a non-space character. GPT-2 and
# cl100k style regexes (as Split or inside ByteLevel) put a space only before a word.
_SPLIT_PATTERNS = frozenset(
    {
        QWEN_SPLIT_PATTERN,
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    }
)
# Steps that only split a piece further or map its characters, piece by piece.
_PER_PIECE_STEPS = frozenset({"ByteLevel", "Digits", "Metaspace"})
_PIECE_MODELS = frozenset({"WordPiece", "BPE", "Unigram", "WordLevel"})


def _local_normalizer(state: Any) -> bool:
    if state is None:
        return True
    kind = state.get("type")
    if kind == "Sequence":
        return all(_local_normalizer(s) for s in state.get("normalizers", []))
    if kind == "Replace":
        return state.get("pattern") in _SPACE_RUNS and state.get("content") == " "
    return kind in _LOCAL_NORMALIZERS


def _splits_at_spaces(state: Any) -> bool:
    kind = state.get("type")
    if kind == "Sequence":
        steps = state.get("pretokenizers") or [{}]
        return _splits_at_spaces(steps[0]) and all(
            s.get("type") in _PER_PIECE_STEPS for s in steps[1:]
        )
    if kind == "Split":
        return (
            state.get("behavior") == "Isolated"
            and state.get("invert") is False
            and any(state.get("pattern") == {"Regex": p} for p in _SPLIT_PATTERNS)
        )
    if kind == "Metaspace":
        return bool(state.get("split", True))
    if kind == "ByteLevel":
        return bool(state.get("use_regex", True))
    return kind in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")


def cuts_at_spaces(rust: Any) -> bool:
    """Whether a prefix of a text ending at a :func:`space_cut` gives ``rust`` (a
    ``tokenizers.Tokenizer``, added tokens included) the whole text's pieces but its last
    two (see the module docstring): local normalisers, a pre-tokeniser splitting at
    spaces, a model encoding pieces on their own (no BPE dropout), no added token holding
    whitespace."""

    def state(component: Any) -> Any:
        return None if component is None else json.loads(component.__getstate__())

    try:
        normalizer, pre, model = state(rust.normalizer), state(rust.pre_tokenizer), rust.model
        added = [t.content for t in rust.get_added_tokens_decoder().values()]
    except (AttributeError, TypeError, ValueError):
        return False
    if type(model).__name__ not in _PIECE_MODELS or getattr(model, "dropout", None):
        return False
    if any(any(c.isspace() for c in token) for token in added):
        return False
    return _local_normalizer(normalizer) and pre is not None and _splits_at_spaces(pre)


def first_window(max_tokens: int) -> int:
    """Characters of the first prefix tried for ``max_tokens`` tokens (6 per token is more
    than most text takes; text with longer tokens takes another round)."""
    return 6 * (max_tokens + 1) + 256


def encode_heads(
    plain: Any,
    texts: Sequence[str],
    max_tokens: int,
    cut: Callable[[str, int], int | None] = safe_cut,
) -> list[list[int]]:
    """For each text, its token ids (``plain`` tokenizer, a :func:`cuts_exactly` one), or
    when it has more than ``max_tokens``, its first ``k > max_tokens`` ids (any ``k``):
    in both cases exactly a prefix of the whole text's ids. ``cut``: where a prefix may
    end (:func:`space_cut` for a :func:`cuts_at_spaces` tokenizer)."""
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
        cuts = [(i, cut(texts[i], size)) for i in pending if len(texts[i]) > size]
        again = [i for i, end in cuts if end is None]
        windows = [(i, end) for i, end in cuts if end is not None]
        encoded = plain.encode_batch(
            [texts[i][:end] for i, end in windows], add_special_tokens=False
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
