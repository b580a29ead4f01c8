"""Suites that need something CI machines may lack (vLLM, a GPU): skip them where it is
missing, unless the run says it is required, so a required suite never passes vacuously."""

from __future__ import annotations

import os

import pytest


def skip_unless_available(
    items: list[pytest.Item], folder: str, available: bool, require_var: str, missing: str
) -> None:
    """Mark the items under ``folder`` skipped when not ``available``; with
    ``require_var=1`` in the environment, stop the run instead."""
    if available:
        return
    if os.environ.get(require_var) == "1":
        raise pytest.UsageError(f"{require_var}=1 but {missing}")
    skip = pytest.mark.skip(reason=missing)
    for item in items:
        if f"tests/{folder}/" in str(item.fspath):
            item.add_marker(skip)
