"""Text-pair encoding of the cross-encoder families, on their real tokenizers: whatever the
document, the pair's ids and token types are the tokenizer's own pair encoding with only
the document truncated (what sentence-transformers' ``CrossEncoder`` feeds the model),
although long documents are tokenised only as far as they are kept."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("transformers")

from reranker.core.errors import InvalidRequest  # noqa: E402
from reranker.formats.cross_encoder import FastPairs, TextPairEncoder, encode_pairs  # noqa: E402
from reranker.formats.user_text import cuts_at_spaces, encode_heads, space_cut  # noqa: E402
from reranker.testing import tiny_cross_encoders as tce  # noqa: E402

QUERY = "how do vaccines train the immune system"


def _mixed_text(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    pieces = [
        "the", "Vaccine", "réunion", "e\u0301", "\u0301\u0323", "中文", "東京", "🎉", "가",
        "\u1100\u1161", "'s", "don't", "42", "3.14", "=", "----", "!?", " ", "  ", "    ",
        "\t", "\n", "\n\n", " \n", "\r\n", "\u00a0", "\u3000", "\u200b", "ﬁ", "İ", "ß",
        "\u2581", "##ing", "[SEP]", "[CLS]", "<mask>", "</s>", "<|im_end|>", "\x00", "\ufffd",
    ]  # fmt: skip
    out: list[str] = []
    size = 0
    while size < chars:
        piece = rng.choice(pieces) * rng.choice([1, 1, 1, 2, 5, 30])
        out.append(piece)
        size += len(piece)
    return "".join(out)[:chars]


LONG_DOCS = {
    "mixed": _mixed_text(0, 60_000),
    "prose": " ".join(f"Paragraph {i}: antibodies and memory cells form." for i in range(900)),
    "a-run": "a" * 30_000,
    "spaces": ("x" + " " * 997 + "\n") * 40,
    "newline-runs": "\n \n  \n" * 5_000 + "end",
    "cjk": "数字与文字混合的文本。" * 3_000,
    "added-tokens": "word [SEP] <mask> </s> [CLS] " * 2_000,
}
SHORT_DOCS = ["Bananas are rich in potassium.", "x", "La vacunación entrena al sistema."]


@pytest.fixture(scope="module", params=["bert", "xlm-roberta", "modernbert"])
def family_tokenizer(request, tmp_path_factory):
    """A family's tokenizer as the backends load it: saved, then read by AutoTokenizer."""
    from transformers import AutoTokenizer

    family = request.param
    if not tce.tokenizer_source_available(family):
        pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} (the {family} tokenizer) is not installed")
    directory = tmp_path_factory.mktemp(family)
    tce.build_tokenizer(family).save_pretrained(directory)
    return family, AutoTokenizer.from_pretrained(directory)


def reference(tokenizer, query, docs, max_len, max_doc_tokens=None):
    """The tokenizer's own pair encoding, only the document truncated."""
    query_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
    room = max_len - query_len - tokenizer.num_special_tokens_to_add(pair=True)
    keep = room if max_doc_tokens is None else min(room, max_doc_tokens)
    out = tokenizer(
        [query] * len(docs), docs, truncation="only_second", max_length=max_len - room + keep
    )
    whole = tokenizer(docs, add_special_tokens=False)["input_ids"]
    types = out.get("token_type_ids")
    return list(out["input_ids"]), types, sum(len(ids) > keep for ids in whole)


def test_the_families_tokenise_long_documents_only_as_far_as_kept(family_tokenizer):
    _, tokenizer = family_tokenizer
    fast = FastPairs.of(tokenizer)
    assert fast is not None and fast.windows
    assert fast.layout.specials == tokenizer.num_special_tokens_to_add(pair=True)


@pytest.mark.parametrize("max_doc_tokens", [None, 1, 40, 300])
@pytest.mark.parametrize("max_len", [512, 64])
def test_pairs_are_the_tokenizers_own_pair_encoding(family_tokenizer, max_len, max_doc_tokens):
    """Long and short documents of every kind: ids, token types and the count of cut
    documents equal ``tokenizer(query, doc, truncation="only_second")``'s."""
    family, tokenizer = family_tokenizer
    docs = [*LONG_DOCS.values(), *SHORT_DOCS]
    want = reference(tokenizer, QUERY, docs, max_len, max_doc_tokens)
    got = TextPairEncoder(tokenizer, max_len).encode(QUERY, docs, None, max_doc_tokens)
    assert got.ids == want[0], family
    assert got.types == want[1], family  # None where the model takes no token types
    assert got.truncated == want[2]
    assert all(len(ids) <= max_len for ids in got.ids)
    # the same without the fast path: whole documents through the tokenizer itself
    assert encode_pairs(tokenizer, QUERY, docs, max_len, max_doc_tokens) == (
        got.ids,
        got.types,
        got.truncated,
    )


def test_random_texts_keep_their_first_ids(family_tokenizer):
    """Texts of a few kinds of characters in runs: the ids of a prefix cut at a space are
    always the whole text's first ids."""
    family, tokenizer = family_tokenizer
    rust = FastPairs.of(tokenizer).rust
    pool = ["a", "Word", "é", "e\u0301", "\u0301", "中", "🎉", "'s", "7", ".", "=-", " ",
            " \n", "\n ", "\t", "\n", "\u00a0", "\u3000", "[SEP]", "<mask>", "</s>",
            "İ", "ﬁ", "\u2581", "##"]  # fmt: skip
    rng = random.Random(11)
    for trial in range(150):
        kinds = rng.sample(pool, rng.randint(2, 5))
        runs = rng.randint(100, 600)
        text = "".join(rng.choice(kinds) * rng.choice([1, 1, 2, 3, 9, 40]) for _ in range(runs))
        n = rng.randint(1, 60)
        whole = rust.encode(text, add_special_tokens=False).ids
        got = encode_heads(rust, [text], n, cut=space_cut)[0]
        assert got == whole[: len(got)] and (len(got) > n or got == whole), (family, trial, n)


def test_a_huge_document_is_not_tokenised_in_full(family_tokenizer):
    _, tokenizer = family_tokenizer
    encoder = TextPairEncoder(tokenizer, 512)
    rust = encoder.fast.rust
    seen: list[int] = []

    class Counting:
        def __getattr__(self, name):
            return getattr(rust, name)

        def encode_batch(self, texts, **kw):
            seen.extend(map(len, texts))
            return rust.encode_batch(texts, **kw)

        def encode_batch_fast(self, texts, **kw):
            seen.extend(map(len, texts))
            return rust.encode_batch_fast(texts, **kw)

    doc = ("A sentence about rivers, 42 of them; " * 120_000)[:4_000_000]
    encoder.fast.rust = Counting()
    got = encoder.encode(QUERY, [doc], None, None)
    assert got.truncated == 1 and len(got.ids[0]) == 512
    assert max(seen) < 20_000  # characters given to the tokenizer at once
    assert got.ids == reference(tokenizer, QUERY, [doc[:20_000]], 512)[0]


def test_a_tokenizer_not_known_to_cut_at_spaces_tokenises_whole_documents(family_tokenizer):
    """A pre-tokeniser that keeps the whole text one piece: documents go whole through the
    tokenizer, the ids unchanged."""
    from tokenizers import pre_tokenizers

    family, tokenizer = family_tokenizer
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer._tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    fast = FastPairs.of(tokenizer)
    assert fast is not None and not fast.windows and not cuts_at_spaces(fast.rust)
    docs = [LONG_DOCS["prose"], *SHORT_DOCS]
    got = TextPairEncoder(tokenizer, 128).encode(QUERY, docs, None, None)
    assert (got.ids, got.types, got.truncated) == reference(tokenizer, QUERY, docs, 128)


def test_the_encoder_leaves_the_tokenizer_as_it_was(family_tokenizer):
    _, tokenizer = family_tokenizer
    before = (tokenizer._tokenizer.truncation, tokenizer._tokenizer.padding)
    TextPairEncoder(tokenizer, 512).encode(QUERY, [LONG_DOCS["prose"]], None, 30)
    assert (tokenizer._tokenizer.truncation, tokenizer._tokenizer.padding) == before


def test_a_query_leaving_no_room_is_refused(family_tokenizer):
    _, tokenizer = family_tokenizer
    with pytest.raises(InvalidRequest) as exc:
        TextPairEncoder(tokenizer, 16).encode("word " * 40, ["doc"], None, None)
    assert exc.value.param == "query"
