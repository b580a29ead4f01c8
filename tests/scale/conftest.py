"""Ray Serve tests run where Ray is installed (``setup_reranker_venv.sh ... --with ray``);
elsewhere they skip, unless ``RERANK_REQUIRE_RAY=1`` (scripts/test.sh sets it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from suite_gate import skip_unless_available  # noqa: E402

HAVE_RAY = importlib.util.find_spec("ray") is not None


def pytest_collection_modifyitems(config, items):
    skip_unless_available(
        items,
        "scale",
        HAVE_RAY,
        "RERANK_REQUIRE_RAY",
        "ray is not importable here (scripts/setup_reranker_venv.sh <backend> --with ray)",
    )
