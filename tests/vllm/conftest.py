"""vLLM tests run in a vLLM backend venv; elsewhere they skip, unless vLLM is required.

scripts/test.sh sets RERANK_REQUIRE_VLLM=1 in the vLLM venv, so a broken vLLM install
fails the run instead of silently skipping the real-engine tests.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "parity"))

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    if os.environ.get("RERANK_REQUIRE_VLLM") == "1":
        raise pytest.UsageError("RERANK_REQUIRE_VLLM=1 but vllm is not importable here")
    skip = pytest.mark.skip(reason="vllm not installed (run in .venv-reranker-qwen3_vllm)")
    for item in items:
        if "tests/vllm/" in str(item.fspath):
            item.add_marker(skip)
