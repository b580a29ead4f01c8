"""``cross_encoder_vllm`` on a real vLLM engine, on offline tiny BERT, XLM-RoBERTa and
ModernBERT cross-encoders (real tokenizers): raw scores equal a plain transformers
``AutoModelForSequenceClassification`` forward on ``tokenizer(query, doc, truncation=True,
max_length=L)`` within 1e-4 in float32, a truncated document included; the model takes no
instruction; a checkpoint that is no cross-encoder is refused before any engine starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from reranker.backends.vllm import engine as vllm_engine
from reranker.backends.vllm.cross_encoder import (
    CrossEncoderVLLMBackend,
    CrossEncoderVLLMOptions,
    compressed_token_types,
)
from reranker.core.errors import ConfigError, InvalidRequest
from reranker.core.protocol import UNUSABLE_LOGIT, ScoreRequest, sigmoid
from reranker.testing import tiny_cross_encoders as tce

MAX_LEN = 128  # tokens a pair: small engines, and LONG is cut
QUERIES = ["how do vaccines train the immune system", "¿Dónde está la biblioteca más grande?"]
LONG = " ".join(
    f"Paragraph {i}: antibodies and memory cells form after exposure." for i in range(40)
)
DOCS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen.",
    "Bananas are rich in potassium.",
    LONG,  # longer than MAX_LEN tokens: the document is cut, never the query
    "Vaccines expose the immune system to a harmless piece of a pathogen.",  # duplicate
    "",
    "La Biblioteca del Congreso en Washington es una de las más grandes del mundo.",
    "东京是日本的首都。 Emoji 🚀 and accents: naïve café.",
]


def cpu_options(directory: Path, **overrides) -> dict:
    """What runs on a CPU-only machine: fp32, eager, a small share of memory."""
    return {
        "model_name": str(directory),
        "max_model_len": MAX_LEN,
        "dtype": "float32",
        "gpu_memory_utilization": 0.3,
        "enforce_eager": True,
        **overrides,
    }


@pytest.fixture(scope="module", params=tce.FAMILIES)
def family_model(request, tmp_path_factory):
    """(family, model directory, backend): one engine per family, one at a time."""
    family = request.param
    if not tce.tokenizer_source_available(family):
        pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} (the {family} tokenizer) is not installed")
    directory = tce.build_model(tmp_path_factory.mktemp(family), family)
    backend = CrossEncoderVLLMBackend(cpu_options(directory))
    yield family, directory, backend
    backend.close()


def reference_logits(directory: Path, query: str, docs: list[str]) -> list[float]:
    """The model's logit of each pair, from a plain transformers forward."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), dtype=torch.float32
    ).eval()
    out = []
    with torch.no_grad():
        for doc in docs:
            enc = tokenizer(query, doc, truncation=True, max_length=MAX_LEN, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def test_raw_logits_equal_transformers(family_model):
    family, directory, backend = family_model
    usable = [i for i, d in enumerate(DOCS) if d.strip()]
    worst = 0.0
    for query in QUERIES:
        scores, meta = backend.score_with_meta(query, DOCS, normalize=False)
        expected = reference_logits(directory, query, [DOCS[i] for i in usable])
        for i, want in zip(usable, expected, strict=True):
            assert scores[i] == pytest.approx(want, abs=1e-4), (family, query, i)
            worst = max(worst, abs(scores[i] - want))
        assert scores[4] == UNUSABLE_LOGIT
        assert meta["truncated_docs"] == 1 and meta["unique_docs"] == 5
        assert meta["inference_batches"] == 1 and meta["scored_tokens"] > 0
        assert meta["family"] == family and meta["backend"] == "cross_encoder_vllm"
        assert meta["device"] == "cpu" and meta["dtype"] == "float32"
        assert "instruction_format" not in meta
        normalised = backend.score(query, DOCS)
        assert normalised[0] == pytest.approx(sigmoid(expected[0]), abs=1e-4)
    print(f"{family}: max |vLLM - transformers| = {worst:.2e}")


def test_scored_tokens_are_the_pair_lengths(family_model):
    _, directory, backend = family_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    docs = DOCS[:2]
    _, meta = backend.score_with_meta(QUERIES[0], docs, normalize=False)
    lengths = [len(tokenizer(QUERIES[0], d)["input_ids"]) for d in docs]
    assert meta["scored_tokens"] == sum(lengths)


def test_max_doc_tokens_cuts_the_document(family_model):
    family, directory, backend = family_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ids = tokenizer(DOCS[0], add_special_tokens=False, return_offsets_mapping=True)
    head = DOCS[0][: ids["offset_mapping"][4][1]]  # the first 5 tokens' text
    cut, meta = backend.score_with_meta(QUERIES[0], [DOCS[0]], normalize=False, max_doc_tokens=5)
    assert meta["truncated_docs"] == 1
    want = reference_logits(directory, QUERIES[0], [head])[0]
    assert cut[0] == pytest.approx(want, abs=1e-4), family


def test_instruction_is_refused(family_model):
    _, _, backend = family_model
    with pytest.raises(InvalidRequest) as info:
        backend.score_with_meta(QUERIES[0], DOCS[:1], instruction="Judge relevance")
    assert info.value.param == "instruction"


def test_a_query_too_long_fails_only_its_own_request(family_model):
    _, _, backend = family_model
    long_query = "immune " * (MAX_LEN * 2)
    bad, good = backend.score_requests(
        [ScoreRequest(long_query, DOCS[:2]), ScoreRequest(QUERIES[0], DOCS[:2], normalize=False)]
    )
    assert isinstance(bad, InvalidRequest) and bad.param == "query"
    assert not isinstance(good, InvalidRequest)
    alone = backend.score(QUERIES[0], DOCS[:2], normalize=False)
    assert good[0] == pytest.approx(alone, abs=1e-5)


def test_a_causal_checkpoint_is_refused_before_any_engine(tiny_model_dir, monkeypatch):
    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(vllm_engine, "start_engines", no_engine)
    with pytest.raises(ConfigError, match="Qwen3ForCausalLM"):
        CrossEncoderVLLMBackend(cpu_options(tiny_model_dir))


def test_qwen3_overrides_are_refused():
    assert CrossEncoderVLLMOptions().use_original_qwen3_hf_overrides is False
    with pytest.raises(ValidationError, match="use_original_qwen3_hf_overrides"):
        CrossEncoderVLLMOptions(use_original_qwen3_hf_overrides=True)


def test_compressed_token_types():
    assert compressed_token_types([0, 0, 0, 1, 1]) == 3
    assert compressed_token_types([0, 0]) == 2
    assert compressed_token_types([1, 1]) == 0
    with pytest.raises(RuntimeError):
        compressed_token_types([0, 1, 0])
