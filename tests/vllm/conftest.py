"""vLLM tests run in a vLLM backend venv; elsewhere they skip, unless vLLM is required.

scripts/test.sh sets RERANK_REQUIRE_VLLM=1 in the vLLM venv, so a broken vLLM install
fails the run instead of silently skipping the real-engine tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "parity"))

from suite_gate import skip_unless_available  # noqa: E402

# tests/ is on sys.path, so tests/vllm itself looks like a namespace package "vllm"
# (origin None); only a real installation counts.
_spec = importlib.util.find_spec("vllm")
HAVE_VLLM = _spec is not None and _spec.origin is not None


def pytest_collection_modifyitems(config, items):
    skip_unless_available(
        items,
        "vllm",
        HAVE_VLLM,
        "RERANK_REQUIRE_VLLM",
        "vllm is not importable here (run in .venv-reranker-qwen3_vllm)",
    )
