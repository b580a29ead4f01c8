"""Duplicate documents are scored once."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def deduplicate_with_positions(texts: Sequence[T]) -> tuple[list[T], list[int]]:
    """Return the unique items in first-seen order and, per input position, its unique index.

    ``unique[position_to_unique[i]] == texts[i]`` for every ``i``.
    """
    index_of: dict[T, int] = {}
    unique: list[T] = []
    position_to_unique: list[int] = []
    for text in texts:
        idx = index_of.get(text)
        if idx is None:
            idx = len(unique)
            index_of[text] = idx
            unique.append(text)
        position_to_unique.append(idx)
    return unique, position_to_unique
