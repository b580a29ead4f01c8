"""Prompt layout, tokenisation boundaries and truncation, on the real Qwen3 tokenizer."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from reranker.errors import InvalidRequest  # noqa: E402
from reranker.prompts.qwen3 import (  # noqa: E402
    DEFAULT_INSTRUCTION,
    NO_TOKEN_ID,
    STANDARD_SUFFIX,
    YES_TOKEN_ID,
    Qwen3PromptEncoder,
    Qwen3PromptTemplate,
)
from reranker.testing.tiny_qwen3 import EXPECTED_SUFFIX_IDS  # noqa: E402


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer):
    from reranker.backends._hf_loading import HFTextTokenizer

    return HFTextTokenizer(qwen3_tokenizer)


@pytest.fixture(scope="module")
def tokenize(tok):
    return tok.encode_batch


def test_rust_fast_path_gives_the_tokenizers_own_ids(tok, qwen3_tokenizer):
    assert tok._encode_fast is not None  # the real Qwen3 tokenizer takes the fast path
    texts = [
        "",
        "  leading and trailing spaces  ",
        "Ünïcödé, 中文, emoji 🎉 and\ttabs\nnewlines",
        "<|im_end|> special tokens written as text <|im_start|>assistant",
        "word " * 400,
        "\n\n\ncode: def f(x):\n    return x ** 2  # comment",
    ]
    expected = qwen3_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert tok.encode_batch(texts) == expected


def test_real_tokenizer_ids(qwen3_tokenizer):
    assert qwen3_tokenizer.convert_tokens_to_ids("yes") == YES_TOKEN_ID == 9693
    assert qwen3_tokenizer.convert_tokens_to_ids("no") == NO_TOKEN_ID == 2152
    assert (
        qwen3_tokenizer(STANDARD_SUFFIX, add_special_tokens=False)["input_ids"]
        == [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
        == EXPECTED_SUFFIX_IDS
    )
    assert qwen3_tokenizer.convert_tokens_to_ids("</think>") == 151668
    assert len(qwen3_tokenizer) == 151669


def test_standard_layout_is_the_model_cards():
    t = Qwen3PromptTemplate.build()
    text = t.prompt_text("Q?", "D.", "I")
    assert text == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n<Instruct>: I\n<Query>: Q?\n<Document>: D."
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_compact_layout_puts_instruction_in_system():
    text = Qwen3PromptTemplate.build("compact").prompt_text("Q", "D", "Rank products")
    assert text.startswith("<|im_start|>system\nRank products<|im_end|>\n<|im_start|>user\n")
    assert "<Instruct>: Rank products\n\n<Query>: Q\n\n<Document>: D<|im_end|>" in text


QUERIES = ["what?", "Ünïcödé query…", "code: x = {a: 1}", "ends with space ", "数字 123"]
DOCS = ["A doc.", "  leading", "emoji 🚀!", "line\nbreaks\n\n", "{doc} braces", "a" * 50]


@pytest.mark.parametrize("fmt", ["standard", "compact"])
def test_split_tokenisation_equals_whole_prompt(fmt, tok, tokenize):
    """The three parts tokenised apart give the ids of the whole prompt tokenised at once."""
    template = Qwen3PromptTemplate.build(fmt)
    encoder = Qwen3PromptEncoder(template, tok, max_length=10_000)
    for q in QUERIES:
        enc = encoder.encode(q.strip(), DOCS, DEFAULT_INSTRUCTION)
        for i, d in enumerate(DOCS):
            whole = tokenize([template.prompt_text(q.strip(), d, DEFAULT_INSTRUCTION)])[0]
            assert enc.prompt_ids(i) == whole


def test_truncation_cuts_only_the_document(tok):
    template = Qwen3PromptTemplate.build()
    encoder = Qwen3PromptEncoder(template, tok, max_length=120)
    long_doc = "word " * 500
    enc = encoder.encode("a query", ["short", long_doc], DEFAULT_INSTRUCTION)
    assert enc.truncated == [False, True]
    ids = enc.prompt_ids(1)
    assert len(ids) == 120
    assert ids[-9:] == EXPECTED_SUFFIX_IDS  # suffix intact
    assert ids[: len(enc.query_ids)] == enc.query_ids  # query intact
    assert enc.lengths()[1] == 120


def test_max_doc_tokens_caps_the_document(tok, tokenize):
    encoder = Qwen3PromptEncoder(Qwen3PromptTemplate.build(), tok, max_length=4096)
    enc = encoder.encode("q", ["word " * 100], DEFAULT_INSTRUCTION, max_doc_tokens=10)
    lead = len(tokenize(["<Document>: "])[0])
    assert len(enc.doc_ids[0]) == lead + 10 and enc.truncated == [True]


def test_query_too_long_is_a_clear_error(tok):
    encoder = Qwen3PromptEncoder(Qwen3PromptTemplate.build(), tok, max_length=100)
    with pytest.raises(InvalidRequest) as err:
        encoder.encode("query " * 200, ["doc"], DEFAULT_INSTRUCTION)
    assert err.value.param == "query" and "max_model_len" in str(err.value)


@pytest.mark.parametrize("doc", ["emoji 🚀🔥 " * 80, "数字与文字混合的文本" * 40, "naïve " * 90])
def test_truncated_text_round_trips_to_the_kept_ids(tok, tokenize, doc):
    """Cut docs come back as text that tokenises to exactly the kept ids."""
    template = Qwen3PromptTemplate.build()
    encoder = Qwen3PromptEncoder(template, tok, max_length=150)
    enc = encoder.encode("q", [doc], DEFAULT_INSTRUCTION)
    assert enc.truncated == [True]
    assert doc.startswith(enc.doc_texts[0]) and len(enc.doc_texts[0]) < len(doc)
    assert tokenize(["<Document>: " + enc.doc_texts[0]])[0] == enc.doc_ids[0]
    assert len(enc.prompt_ids(0)) >= 150 - 3  # at most a few tokens short of the limit
    whole = tokenize([template.prompt_text("q", enc.doc_texts[0], DEFAULT_INSTRUCTION)])[0]
    assert whole == enc.prompt_ids(0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_template": "{prefix}{instruction}"}, "{query}"),
        ({"document_template": "{doc}{doc}"}, "{doc}"),
        ({"document_template": "{doc}{nope}"}, "unknown placeholder"),
        ({"query_template": "{query"}, "not a valid template"),
    ],
)
def test_bad_templates_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Qwen3PromptTemplate.build(**kwargs)


def test_waves_hand_over_consecutive_jobs_once_they_hold_enough_tokens(tok):
    """The transformers backend tokenises wave i+1 while the device runs wave i: every job
    lands in exactly one wave, in order, and a wave closes once it reaches the minimum."""
    from reranker.backends._jobs import FlatPrompts
    from reranker.protocol import ScoreJob

    docs = ["short one", "a somewhat longer document about rivers " * 8, "x"]
    jobs = [ScoreJob(f"query {i}", docs, DEFAULT_INSTRUCTION) for i in range(7)]
    jobs[3] = ScoreJob("word " * 600, docs, DEFAULT_INSTRUCTION)  # too long: error, no prompts
    encoder = Qwen3PromptEncoder(Qwen3PromptTemplate.build(), tok, 512)
    per_job = sum(FlatPrompts.build(encoder, jobs[:1]).lengths)
    waves = list(FlatPrompts.in_waves(encoder, jobs, min_tokens=2 * per_job))
    assert [len(w.jobs) for w in waves] == [2, 3, 2]  # the invalid job adds no tokens
    assert [job for w in waves for job in w.jobs] == jobs
    assert all(sum(w.lengths) >= 2 * per_job for w in waves[:-1])
    assert isinstance(waves[1].encoded[1], InvalidRequest)
    whole = FlatPrompts.build(encoder, jobs)
    assert [n for w in waves for n in w.lengths] == whole.lengths


def test_head_split_sends_the_first_documents_ahead_in_a_wave_of_their_own(tok):
    """HeadSplit splits only a first job with more than twice the head's documents; the
    head is a wave by itself; join gives one result per original job, halves merged."""
    from reranker.backends._jobs import FlatPrompts, HeadSplit
    from reranker.protocol import ScoreJob

    docs = [f"document number {i} " * (i + 1) for i in range(9)]
    jobs = [ScoreJob("q one", docs, DEFAULT_INSTRUCTION), ScoreJob("q two", docs[:2], "")]
    assert not HeadSplit.of(jobs, 0).split and not HeadSplit.of(jobs, 5).split
    split = HeadSplit.of(jobs, 4)
    assert split.split and [j.docs for j in split.jobs] == [docs[:4], docs[4:], docs[:2]]
    assert split.jobs[0].query == split.jobs[1].query == "q one"
    encoder = Qwen3PromptEncoder(Qwen3PromptTemplate.build(), tok, 512)
    waves = list(FlatPrompts.in_waves(encoder, split.jobs, 10**6, first_alone=True))
    assert [len(w.jobs) for w in waves] == [1, 2]  # the head alone, then everything else
    results = [r for w in waves for r in w.results([float(n) for n in w.lengths], 1)]
    joined = split.join(results)
    whole = FlatPrompts.build(encoder, jobs)
    assert len(joined) == 2 and joined[0].logits == [float(n) for n in whole.lengths[:9]]
    assert joined[0].batches == 2 and joined[0].tokens == sum(whole.lengths[:9])
    assert joined[1] == results[2]
