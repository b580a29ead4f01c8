"""qwen3_vllm on a real vLLM engine (CPU build in CI) and the tiny offline model."""

from __future__ import annotations

import threading

import pytest
from engines import vllm_backend
from pairs import DOCS, QUERIES
from parity_check import assert_matches_reference

from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = vllm_backend("qwen3_vllm", tiny_model_dir)
    yield b
    b.close()


def test_matches_model_card_recipe(backend, reference):
    assert assert_matches_reference(backend, reference) >= 50


def test_one_engine_call_per_request(backend):
    _, meta = backend.score_with_meta(QUERIES[0], DOCS)
    assert meta["inference_batches"] == 1
    assert meta["logprob_method"] in ("logprob_token_ids", "allowed_token_ids")


def _rank_of_no(reference, query: str, doc: str) -> int:
    import torch

    text = (
        f"<Instruct>: Given a web search query, retrieve relevant passages that answer the "
        f"query\n<Query>: {query}\n<Document>: {doc}"
    )
    inputs = reference._inputs([text])
    with torch.no_grad():
        logits = reference.model(**inputs).logits[0, -1]
    return int((logits > logits[NO_TOKEN_ID]).sum())


def test_no_outside_top_20_still_scores_exactly(backend, reference):
    """A doc whose "no" is not among the top-20 logprobs: top-k alone would lose it."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    query = QUERIES[0]
    candidates = [d.strip() for d in DOCS if isinstance(d, str) and d.strip()]
    doc = next(d for d in candidates if _rank_of_no(reference, query, d) > 20)

    # What plain top-20 logprobs return for it: "no" is missing.
    encoded = backend._encoder.encode(query, [doc], backend.options.instruction)
    plain = (
        backend._llm.generate(
            [TokensPrompt(prompt_token_ids=encoded.prompt_ids(0))],
            SamplingParams(max_tokens=1, temperature=0.0, logprobs=20),
            use_tqdm=False,
        )[0]
        .outputs[0]
        .logprobs[0]
    )
    assert NO_TOKEN_ID not in plain

    probs, diffs = reference.score(query, [doc])
    got_prob = backend.score(query, [doc])[0]
    got_diff = backend.score(query, [doc], normalize=False)[0]
    assert got_prob == pytest.approx(probs[0], abs=1e-4)
    assert got_diff == pytest.approx(diffs[0], abs=1e-4)
    # A substituted -10 for the missing "no" would have given another number.
    if YES_TOKEN_ID in plain:
        assert abs((plain[YES_TOKEN_ID].logprob + 10.0) - got_diff) > 1e-3


def test_concurrent_calls_match_sequential(backend):
    expected = {q: backend.score(q, DOCS) for q in QUERIES}
    results: dict[tuple[int, str], list[float]] = {}
    errors: list[BaseException] = []

    def worker(k: int, q: str) -> None:
        try:
            results[(k, q)] = backend.score(q, DOCS)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k, q)) for k in range(3) for q in QUERIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for (_, q), scores in results.items():
        assert scores == pytest.approx(expected[q], abs=1e-5)
    assert len(results) == 3 * len(QUERIES)


def test_starts_where_max_model_len_is_all_the_checkpoint_has(tmp_path):
    """A checkpoint with exactly max_model_len positions: the generated token's position
    is never computed, so the engine starts and a prompt of max_model_len tokens scores as
    on the transformers backend."""
    from reranker.core.registry import load_backend
    from reranker.testing.tiny_qwen3 import build_model

    model = build_model(tmp_path / "tiny-256", max_position_embeddings=256)
    long_doc = " ".join(f"word{i}" for i in range(400))
    docs = [long_doc, "Paris is the capital of France."]
    b = vllm_backend("qwen3_vllm", model, max_model_len=256)
    try:
        scores, meta = b.score_with_meta(QUERIES[0], docs)
    finally:
        b.close()
    assert meta["truncated_docs"] == 1 and meta["max_model_len"] == 256
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    with load_backend("qwen3_transformers", {"model_name": str(model), "max_model_len": 256}) as t:
        expected, t_meta = t.score_with_meta(QUERIES[0], docs)
    assert t_meta["scored_tokens"] == meta["scored_tokens"]
    assert scores == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("head_docs", "sent"), [(0, [32, 5, 3]), (4, [4, 32, 1, 3])])
def test_a_call_streamed_to_the_engine_scores_as_one_generate_call(
    backend, monkeypatch, head_docs, sent
):
    """37 + 3 documents over two queries (the coalesced form), streamed 32 at a time,
    with and without a first chunk of 4 sent alone: the engine gets the chunks in that
    order, and the scores are the plain path's (one ``LLM.generate`` call on every
    prompt)."""
    from reranker.backends.vllm import qwen3_generate
    from reranker.backends.vllm.qwen3 import Qwen3VLLMBackendBase
    from reranker.core.protocol import ScoreJob

    run_streamed = qwen3_generate.run_streamed
    seen: list[int] = []

    def recording(llm, chunks, params, read):
        def counted():
            for chunk in chunks:
                seen.append(len(chunk))
                yield chunk

        return run_streamed(llm, counted(), params, read)

    monkeypatch.setattr(qwen3_generate, "run_streamed", recording)
    monkeypatch.setattr(backend, "stream_docs", 32)
    monkeypatch.setattr(backend, "stream_head_docs", head_docs)
    docs = [d for d in DOCS if isinstance(d, str) and d.strip()]
    many = [f"{docs[k % len(docs)]} ({k})" for k in range(37)]
    instruction = backend.options.instruction
    jobs = [ScoreJob(QUERIES[0], many, instruction), ScoreJob(QUERIES[1], docs[:3], instruction)]
    streamed = backend._score_jobs(jobs)
    assert seen == sent
    plain = Qwen3VLLMBackendBase._score_jobs(backend, jobs)
    for got, want in zip(streamed, plain, strict=True):
        assert got.logits == pytest.approx(want.logits, abs=1e-5)
        assert (got.tokens, got.truncated_docs, got.batches) == (
            want.tokens,
            want.truncated_docs,
            1,
        )
