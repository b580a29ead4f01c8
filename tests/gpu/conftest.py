"""GPU tests: run on a CUDA machine with `scripts/test.sh gpu`, which sets
RERANK_REQUIRE_GPU=1 so that a missing GPU fails the run instead of skipping every test.
CI has no GPU and does not collect this folder; elsewhere without CUDA they skip."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "parity"))

from suite_gate import skip_unless_available  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    skip_unless_available(
        items,
        "gpu",
        torch.cuda.is_available(),
        "RERANK_REQUIRE_GPU",
        "torch sees no CUDA device (run scripts/test.sh gpu on a host with an NVIDIA GPU)",
    )
