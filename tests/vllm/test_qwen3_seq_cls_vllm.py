"""``cross_encoder_vllm`` on a Qwen3-Reranker converted to ``Qwen3ForSequenceClassification``
(the offline tiny Qwen3 reranker, real tokenizer, converted): vLLM's pooling runner reads
the checkpoint as it is, without the original model's overrides, on the Qwen3-Reranker
prompt's token ids; raw and normalised scores equal ``cross_encoder_transformers`` (a
transformers forward) within 1e-4 in float32, with the default and a custom instruction,
with truncation."""

from __future__ import annotations

import pytest
from engines import vllm_backend
from pairs import DOCS, MAX_MODEL_LEN, QUERIES

from reranker.core.registry import load_backend
from reranker.testing.tiny_qwen3_seq_cls import convert

TOL = 1e-4
CUSTOM = "Judge whether the document is written in the query's language"


@pytest.fixture(scope="module")
def seq_cls_dir(tiny_model_dir, tmp_path_factory):
    return convert(tiny_model_dir, tmp_path_factory.mktemp("qwen3-seq-cls"))


@pytest.fixture(scope="module")
def reference(seq_cls_dir):
    """The same checkpoint on transformers (cross_encoder_transformers, float32, CPU)."""
    options = {"model_name": str(seq_cls_dir), "max_model_len": MAX_MODEL_LEN, "device": "cpu"}
    backend = load_backend("cross_encoder_transformers", {**options, "dtype": "float32"})
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def backend(seq_cls_dir):
    loaded = vllm_backend("cross_encoder_vllm", seq_cls_dir)
    yield loaded
    loaded.close()


def test_the_engine_reads_the_checkpoint_without_overrides(backend):
    config = backend._llm.llm_engine.model_config
    assert config.architectures == ["Qwen3ForSequenceClassification"]
    assert not getattr(config.hf_config, "is_original_qwen3_reranker", False)
    assert getattr(config.hf_config, "classifier_from_token", None) is None
    assert backend.takes_instruction


@pytest.mark.parametrize("instruction", [None, CUSTOM], ids=["default", "custom"])
def test_scores_equal_transformers(backend, reference, instruction):
    worst, truncated = 0.0, 0
    for query in QUERIES:
        got, meta = backend.score_with_meta(query, DOCS, normalize=False, instruction=instruction)
        want, want_meta = reference.score_with_meta(
            query, DOCS, normalize=False, instruction=instruction
        )
        assert got == pytest.approx(want, abs=TOL), query
        worst = max(worst, *(abs(a - b) for a, b in zip(got, want, strict=True)))
        probs = backend.score_with_meta(query, DOCS, instruction=instruction)[0]
        want_probs = reference.score_with_meta(query, DOCS, instruction=instruction)[0]
        assert probs == pytest.approx(want_probs, abs=TOL)
        assert meta["scored_tokens"] == want_meta["scored_tokens"]
        assert meta["truncated_docs"] == want_meta["truncated_docs"]
        truncated += meta["truncated_docs"]
        assert meta["family"] == "qwen3-seq-cls" and meta["instruction_format"] == "standard"
        assert meta["backend"] == "cross_encoder_vllm" and meta["inference_batches"] == 1
    assert truncated > 0
    print(f"max |vLLM - transformers| = {worst:.2e}")


def test_max_doc_tokens_cuts_the_same(backend, reference):
    query = QUERIES[1]
    got, meta = backend.score_with_meta(query, DOCS[:5], normalize=False, max_doc_tokens=4)
    want = reference.score_with_meta(query, DOCS[:5], normalize=False, max_doc_tokens=4)[0]
    assert meta["truncated_docs"] == 5
    assert got == pytest.approx(want, abs=TOL)
