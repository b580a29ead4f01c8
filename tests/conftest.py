"""Shared fixtures: the offline tiny Qwen3 reranker, built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random Qwen3 model + real Qwen3 tokenizer.

    ``RERANK_TEST_MODEL`` points at one built beforehand (scripts/test.sh builds it once
    for all venvs); otherwise it is built here.
    """
    prebuilt = os.environ.get("RERANK_TEST_MODEL")
    if prebuilt and (Path(prebuilt) / "config.json").is_file():
        return Path(prebuilt)
    pytest.importorskip("transformers")
    from reranker.testing.tiny_qwen3 import build_model

    return build_model(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def qwen3_tokenizer(tiny_model_dir: Path):
    """The real Qwen3 tokenizer, as saved with the tiny model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def qwen3_text_tokenizer(qwen3_tokenizer):
    """The real Qwen3 tokenizer as the prompt encoders use it (``HFTextTokenizer``)."""
    from reranker.backends.hf_loading import HFTextTokenizer

    return HFTextTokenizer(qwen3_tokenizer)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    """The model card's recipe (tests/parity/model_card_reference.py) on the tiny model."""
    sys.path.insert(0, str(Path(__file__).parent / "parity"))
    from model_card_reference import ModelCardReranker
    from pairs import MAX_MODEL_LEN

    return ModelCardReranker(str(tiny_model_dir), MAX_MODEL_LEN)
