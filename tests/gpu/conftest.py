"""GPU tests: run on a CUDA machine with `scripts/test.sh gpu`, which sets
RERANK_REQUIRE_GPU=1 so that a missing GPU fails the run instead of skipping every test.
CI has no GPU and does not collect this folder; elsewhere without CUDA they skip."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "parity"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("RERANK_REQUIRE_GPU") == "1":
        raise pytest.UsageError("RERANK_REQUIRE_GPU=1 but torch sees no CUDA device")
    skip = pytest.mark.skip(reason="needs CUDA (scripts/test.sh gpu on the GPU machine)")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)
