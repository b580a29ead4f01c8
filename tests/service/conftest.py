"""A real uvicorn server on 127.0.0.1 (random port), in a thread of the test process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "fake_plugin"))
sys.path.insert(0, str(Path(__file__).parent))
from server_helpers import running_server  # noqa: E402


@pytest.fixture(scope="module")
def transformers_server(tiny_model_dir) -> Iterator[str]:
    """The service with the real transformers backend on the tiny model."""
    pytest.importorskip("transformers")
    from reranker.core.registry import load_backend

    def load():
        return load_backend(
            "qwen3_transformers", {"model_name": str(tiny_model_dir), "max_model_len": 512}
        )

    with running_server(
        load, max_docs_per_request=100, max_request_bytes=200_000, max_query_chars=2000
    ) as base:
        yield base
