"""The protocol's contract (tests/conformance/checks.py) on the vLLM backends, each on
the model families it serves. One line per (backend, model) in ``CASES``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "conformance"))
from checks import CHECKS  # noqa: E402
from engines import vllm_backend  # noqa: E402

CASES = [("qwen3_vllm", "qwen3"), ("qwen3_vllm_score", "qwen3")]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def backend(request, tiny_model_dir):
    name, _ = request.param
    loaded = vllm_backend(name, tiny_model_dir)
    yield loaded
    loaded.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(backend, check):
    check(backend)
