"""The protocol's contract (tests/conformance/checks.py) on the vLLM backends, each on
the model families it serves. One line per (backend, model) in ``CASES``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "conformance"))
from checks import CHECKS  # noqa: E402
from engines import vllm_backend  # noqa: E402

CASES = [
    ("qwen3_vllm", "qwen3"),
    ("qwen3_vllm_score", "qwen3"),
    ("cross_encoder_vllm", "bert"),  # the other families: tests/vllm/test_cross_encoder_vllm.py
    ("cross_encoder_vllm", "qwen3-seq-cls"),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def backend(request, tiny_model_dir, tmp_path_factory):
    name, family = request.param
    model = tiny_model_dir
    if family == "qwen3-seq-cls":  # the tiny Qwen3 reranker as a sequence classifier
        from reranker.testing.tiny_qwen3_seq_cls import convert

        model = convert(tiny_model_dir, tmp_path_factory.mktemp(family))
    elif family != "qwen3":
        from reranker.testing import tiny_cross_encoders as tce

        if not tce.tokenizer_source_available(family):
            pytest.skip(f"{tce.TOKENIZER_SOURCES[family][0]} ({family} tokenizer) is missing")
        model = tce.build_model(tmp_path_factory.mktemp(family), family)
    loaded = vllm_backend(name, model)
    yield loaded
    loaded.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(backend, check):
    check(backend)
