"""The offline tiny cross-encoders: build, reload offline, one logit equal to a hand-run head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from reranker.testing import tiny_cross_encoders as tce  # noqa: E402

QUERY = "how long should I boil an egg for a soft yolk"
DOC = "Boil the egg for six minutes, then cool it in cold water."

# (first ids of the pair encoding, what separates query and document)
LAYOUT = {
    "bert": ("[CLS]", ["[SEP]"]),
    "xlm-roberta": ("<s>", ["</s>", "</s>"]),
    "modernbert": ("[CLS]", ["[SEP]"]),
}


def _skip_without_source(family: str) -> None:
    if not tce.tokenizer_source_available(family):
        dist = tce.TOKENIZER_SOURCES[family][0]
        pytest.skip(f"{dist}, which ships the {family} tokenizer, is not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """family -> (directory, tokenizer, model): each family built and reloaded once."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cache: dict[str, tuple[Path, object, object]] = {}

    def get(family: str):
        _skip_without_source(family)
        if family not in cache:
            path = tce.build_model(tmp_path_factory.mktemp(family) / "model", family)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True
            )
            cache[family] = (path, tokenizer, model.eval())
        return cache[family]

    return get


def _hand_head(model, family: str, batch) -> torch.Tensor:
    """The relevance logit from the encoder's last hidden state, pooled and headed by hand."""
    if family == "bert":
        hidden = model.bert(**batch).last_hidden_state
        pooled = torch.tanh(model.bert.pooler.dense(hidden[:, 0]))
        return model.classifier(pooled)[:, 0]
    if family == "xlm-roberta":
        hidden = model.roberta(**batch).last_hidden_state
        head = model.classifier
        return head.out_proj(torch.tanh(head.dense(hidden[:, 0])))[:, 0]
    hidden = model.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)  # classifier_pooling "mean"
    head = model.head
    return model.classifier(head.norm(head.act(head.dense(pooled))))[:, 0]


@pytest.mark.parametrize("family", tce.FAMILIES)
def test_builds_and_scores_one_pair_like_a_hand_run_forward(built, family: str) -> None:
    path, tokenizer, model = built(family)
    marker = json.loads((path / tce.MARKER).read_text())
    assert marker["family"] == family
    assert marker["builder_version"] == tce.BUILDER_VERSION
    assert marker["tokenizer_source"].startswith(tce.TOKENIZER_SOURCES[family][0] + " ")

    assert type(model).__name__ == tce.ARCHITECTURES[family]
    assert model.config.num_labels == 1
    assert model.config.vocab_size == len(tokenizer) == tce.VOCAB_SIZES[family]

    pair = tokenizer(QUERY, DOC, truncation=True, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"][0])
    first, separator = LAYOUT[family]
    query_len = len(tokenizer(QUERY, add_special_tokens=False)["input_ids"])
    assert tokens[0] == first
    assert tokens[1 + query_len : 1 + query_len + len(separator)] == separator
    assert tokens[-1] == separator[-1]
    if family == "bert":
        types = pair["token_type_ids"][0].tolist()
        assert types == [0] * (1 + query_len + 1) + [1] * (len(types) - query_len - 2)
    else:
        assert "token_type_ids" not in pair

    with torch.no_grad():
        logits = model(**pair).logits
        by_hand = _hand_head(model, family, pair)
    assert logits.shape == (1, 1)
    assert torch.isfinite(logits).all()
    assert abs(logits[0, 0].item() - by_hand[0].item()) < 1e-5


@pytest.mark.parametrize("family", tce.FAMILIES)
def test_truncates_a_long_pair_to_the_position_table(built, family: str) -> None:
    _, tokenizer, model = built(family)
    pair = tokenizer(QUERY, DOC * 200, truncation=True, return_tensors="pt")
    assert pair["input_ids"].shape[1] == tce.MAX_LENGTH
    with torch.no_grad():
        assert torch.isfinite(model(**pair).logits).all()


def test_scores_spread_across_pairs(built) -> None:
    _, tokenizer, model = built("bert")
    queries, docs = zip(*tce.spread_pairs()[:16], strict=True)
    batch = tokenizer(list(queries), list(docs), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
    assert logits.std().item() > 0.5


def test_build_is_idempotent_and_refuses_foreign_dirs(built, tmp_path: Path) -> None:
    path, _, _ = built("bert")
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert tce.build_model(path, "bert") == path
    assert weights.stat().st_mtime_ns == before
    other = tmp_path / "other-seed"
    shutil.copytree(path, other)
    tce.build_model(other, "bert", seed=1)
    assert json.loads((other / tce.MARKER).read_text())["seed"] == 1
    assert (other / "model.safetensors").read_bytes() != weights.read_bytes()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        tce.build_model(foreign, "bert")
    (foreign / tce.MARKER).write_text('{"shape": "tiny", "seed": 0, "builder_version": 2}')
    with pytest.raises(FileExistsError):  # a tiny Qwen3 model's marker names no family
        tce.build_model(foreign, "bert")
    with pytest.raises(ValueError, match="unknown family"):
        tce.build_model(tmp_path / "x", "t5")


def test_sentence_transformers_cross_encoder_gives_the_same_logit(built) -> None:
    # BERT only: CrossEncoder reloads the tokenizer, seconds for the XLM-R and Qwen3 ones.
    path, tokenizer, model = built("bert")
    st = pytest.importorskip("sentence_transformers")
    with torch.no_grad():
        logit = model(**tokenizer(QUERY, DOC, truncation=True, return_tensors="pt")).logits
    encoder = st.CrossEncoder(str(path), device="cpu", local_files_only=True)
    score = encoder.predict([(QUERY, DOC)], activation_fn=torch.nn.Identity())
    assert abs(float(score[0]) - logit[0, 0].item()) < 1e-5


def test_the_cli_builds_a_cross_encoder_and_refuses_a_qwen3_shape(tmp_path):
    import subprocess
    import sys

    _skip_without_source("bert")
    cli = [sys.executable, "-m", "reranker.cli", "build-test-model"]
    built_ok = subprocess.run([*cli, str(tmp_path / "bert"), "--family", "bert"], timeout=120)
    assert built_ok.returncode == 0
    marker = json.loads((tmp_path / "bert" / "reranker_test_model.json").read_text())
    assert marker["family"] == "bert"
    refused = subprocess.run(
        [*cli, str(tmp_path / "x"), "--family", "bert", "--shape", "0.6b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "built as tiny or base or large" in refused.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", tce.FAMILIES)
def test_benchmark_shapes_are_the_published_sizes(family: str) -> None:
    _skip_without_source(family)
    sizes = {  # (layers, hidden, heads, intermediate, tokens a pair)
        ("bert", "base"): (12, 768, 12, 3072, 512),
        ("bert", "large"): (24, 1024, 16, 4096, 512),
        ("xlm-roberta", "base"): (12, 768, 12, 3072, 512),
        ("xlm-roberta", "large"): (24, 1024, 16, 4096, 8192),  # bge-reranker-v2-m3
        ("modernbert", "base"): (22, 768, 12, 1152, 8192),
        ("modernbert", "large"): (28, 1024, 16, 2624, 8192),
    }
    for shape in ("base", "large"):
        tokens = tce.shape_of(family, shape)[1]
        tokenizer = tce.build_tokenizer(family, tokens)
        config = tce.build_config(family, tokenizer, shape)
        got = (
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            tokenizer.model_max_length,
        )
        assert got == sizes[family, shape]
        positions = tokens + 2 if family == "xlm-roberta" else tokens
        assert config.max_position_embeddings == positions
        assert config.vocab_size == tce.VOCAB_SIZES[family] and config.num_labels == 1
    with pytest.raises(ValueError, match="unknown shape"):
        tce.shape_of(family, "0.6b")
