"""``cross_encoder_transformers`` on offline tiny BERT, XLM-RoBERTa and ModernBERT
cross-encoders (real tokenizers): raw scores equal ``sentence_transformers.CrossEncoder``'s
logits (the reference recipe of these models) within 1e-4 in float32, truncated documents
included; normalised scores are their sigmoid; the model takes no instruction."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from reranker.core.errors import ConfigError, InvalidRequest  # noqa: E402
from reranker.core.protocol import UNUSABLE_LOGIT, sigmoid  # noqa: E402
from reranker.core.registry import load_backend  # noqa: E402
from reranker.testing import tiny_cross_encoders as tce  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from server_helpers import running_server  # noqa: E402

QUERY = "how do vaccines train the immune system"
LONG = " ".join(
    f"Paragraph {i}: antibodies and memory cells form after exposure." for i in range(90)
)
DOCS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen.",
    "Bananas are rich in potassium.",
    LONG,  # longer than 512 tokens: the document is cut, never the query
    "Vaccines expose the immune system to a harmless piece of a pathogen.",  # duplicate
    "",
    "La vacunación entrena al sistema inmunitario.",
]


@pytest.fixture(scope="module", params=["bert", "xlm-roberta", "modernbert"])
def family_model(request, tmp_path_factory):
    family = request.param
    if not tce.tokenizer_source_available(family):
        pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} (the {family} tokenizer) is not installed")
    directory = tce.build_model(tmp_path_factory.mktemp(family), family)
    backend = load_backend("cross_encoder_transformers", {"model_name": str(directory)})
    yield family, directory, backend
    backend.close()


def reference_logits(directory: Path, pairs: list[tuple[str, str]]) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(directory), max_length=512, device="cpu")
    out = model.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    return [float(x) for x in out]


def test_raw_scores_equal_sentence_transformers(family_model):
    family, directory, backend = family_model
    scores, meta = backend.score_with_meta(QUERY, DOCS, normalize=False)
    usable = [i for i, d in enumerate(DOCS) if d.strip()]
    expected = reference_logits(directory, [(QUERY, DOCS[i]) for i in usable])
    for i, want in zip(usable, expected, strict=True):
        assert scores[i] == pytest.approx(want, abs=1e-4), (family, i)
    assert scores[4] == UNUSABLE_LOGIT
    assert meta["truncated_docs"] == 1 and meta["unique_docs"] == 4
    assert meta["family"] == family and meta["backend"] == "cross_encoder_transformers"
    assert "instruction_format" not in meta
    normalised = backend.score(QUERY, DOCS)
    assert normalised[0] == pytest.approx(sigmoid(expected[0]), abs=1e-6)


def test_max_doc_tokens_cuts_the_document_at_a_token_boundary(family_model):
    family, directory, backend = family_model
    tokenizer = backend.tokenizer
    ids = tokenizer(DOCS[0], add_special_tokens=False, return_offsets_mapping=True)
    head = DOCS[0][: ids["offset_mapping"][4][1]]  # the first 5 tokens' text
    cut, meta = backend.score_with_meta(QUERY, [DOCS[0]], normalize=False, max_doc_tokens=5)
    assert meta["truncated_docs"] == 1
    assert cut[0] == pytest.approx(reference_logits(directory, [(QUERY, head)])[0], abs=1e-4)


def test_requests_scored_together_share_batches_and_keep_their_scores(family_model):
    """Several queries' pairs in shared batches score as each query alone; a query that
    leaves no room is that request's error only."""
    from reranker.core.protocol import ScoreRequest

    family, _, backend = family_model
    queries = [QUERY, "bananas and potassium", "word " * 600]
    alone = [backend.score_with_meta(q, DOCS, normalize=False) for q in queries[:2]]
    together = backend.score_requests([ScoreRequest(q, DOCS, False) for q in queries])
    assert isinstance(together[2], InvalidRequest) and together[2].param == "query"
    for (want, want_meta), result in zip(alone, together[:2], strict=True):
        assert not isinstance(result, InvalidRequest)
        scores, meta = result
        assert scores == pytest.approx(want, abs=1e-5), family
        assert meta["truncated_docs"] == want_meta["truncated_docs"] == 1
        assert meta["inference_batches"] == 1  # all pairs of both requests in one batch


def test_an_instruction_is_refused_not_ignored(family_model):
    _, _, backend = family_model
    with pytest.raises(InvalidRequest) as exc:
        backend.score_with_meta(QUERY, DOCS, instruction="Find vaccine facts")
    assert exc.value.param == "instruction"


def test_a_causal_lm_checkpoint_is_refused_at_load(tiny_model_dir):
    with pytest.raises(ConfigError, match="Qwen3ForCausalLM"):
        load_backend("cross_encoder_transformers", {"model_name": str(tiny_model_dir)})


def test_over_http_instruction_is_a_400_and_scores_match(family_model):
    family, _, backend = family_model
    if family != "bert":
        pytest.skip("one family over HTTP is enough")
    with running_server(lambda: backend) as base:
        ok = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": DOCS[:2]}, timeout=60)
        assert ok.status_code == 200, ok.text
        by_index = {r["index"]: r["relevance_score"] for r in ok.json()["results"]}
        assert by_index[0] == pytest.approx(backend.score(QUERY, DOCS[:2])[0], abs=1e-6)
        bad = httpx.post(
            f"{base}/rerank",
            json={"query": QUERY, "documents": DOCS[:2], "instruction": "Find facts"},
            timeout=60,
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "instruction"
