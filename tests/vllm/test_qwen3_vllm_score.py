"""qwen3_vllm_score on a real vLLM engine, and all three backends agreeing."""

from __future__ import annotations

import pytest
from engines import vllm_backend
from pairs import DOCS, MAX_MODEL_LEN, QUERIES
from parity_check import assert_matches_reference

from reranker.core.registry import load_backend


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = vllm_backend("qwen3_vllm_score", tiny_model_dir)
    yield b
    b.close()


def test_matches_model_card_recipe(backend, reference):
    assert assert_matches_reference(backend, reference) >= 50


def test_truncated_doc_scores_like_token_truncation(backend, tiny_model_dir):
    """Truncated documents score the same on the score backend as on transformers."""
    import psutil

    transformers = load_backend(
        "qwen3_transformers", {"model_name": str(tiny_model_dir), "max_model_len": 200}
    )
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    small = vllm_backend("qwen3_vllm_score", tiny_model_dir, max_model_len=200)
    engine_procs = [p for p in me.children(recursive=True) if p.pid not in before]
    assert engine_procs  # vLLM runs its engine core in child processes
    try:
        docs = ["naïve café " * 200, "数字与文字混合的文本" * 50, "emoji 🚀🔥 " * 100]
        a, meta = small.score_with_meta(QUERIES[0], docs, normalize=False)
        b = transformers.score(QUERIES[0], docs, normalize=False)
        assert meta["truncated_docs"] == 3
        assert a == pytest.approx(b, abs=1e-4)
    finally:
        small.close()
        transformers.close()
    # close() shut the engine down: its worker processes are gone.
    assert small._llm is None
    _, alive = psutil.wait_procs(engine_procs, timeout=30)
    assert not alive, [p.name() for p in alive]


def test_three_backends_agree(backend, tiny_model_dir):
    generate = vllm_backend("qwen3_vllm", tiny_model_dir)
    transformers = load_backend(
        "qwen3_transformers", {"model_name": str(tiny_model_dir), "max_model_len": MAX_MODEL_LEN}
    )
    try:
        for query in QUERIES:
            for normalize in (True, False):
                s = backend.score(query, DOCS, normalize)
                g = generate.score(query, DOCS, normalize)
                t = transformers.score(query, DOCS, normalize)
                assert s == pytest.approx(t, abs=1e-4)
                assert g == pytest.approx(t, abs=1e-4)
    finally:
        generate.close()
        transformers.close()
