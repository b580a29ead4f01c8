"""The protocol's contract (``checks.py``) on every backend of this venv's engine and
every model family it serves. One line per (backend, model) in ``CASES``."""

from __future__ import annotations

import pytest
from checks import CHECKS

pytest.importorskip("transformers")

from reranker.core.registry import load_backend  # noqa: E402
from reranker.testing import tiny_cross_encoders as tce  # noqa: E402
from reranker.testing.tiny_qwen3_seq_cls import convert  # noqa: E402

CASES = [
    ("qwen3_transformers", "qwen3"),
    ("cross_encoder_transformers", "bert"),
    ("cross_encoder_transformers", "xlm-roberta"),
    ("cross_encoder_transformers", "modernbert"),
    ("cross_encoder_transformers", "qwen3-seq-cls"),
]


def tiny_model(family: str, tiny_model_dir, tmp_path_factory) -> str:
    """An offline tiny model of ``family`` (real tokenizer)."""
    if family == "qwen3":
        return str(tiny_model_dir)
    if family == "qwen3-seq-cls":  # the tiny Qwen3 reranker as a sequence classifier
        return str(convert(tiny_model_dir, tmp_path_factory.mktemp(family)))
    if not tce.tokenizer_source_available(family):
        pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} (the {family} tokenizer) is missing")
    return str(tce.build_model(tmp_path_factory.mktemp(family), family))


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def backend(request, tiny_model_dir, tmp_path_factory):
    name, family = request.param
    loaded = load_backend(
        name, {"model_name": tiny_model(family, tiny_model_dir, tmp_path_factory)}
    )
    yield loaded
    loaded.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(backend, check):
    check(backend)
