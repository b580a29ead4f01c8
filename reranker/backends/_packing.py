"""Packed batches for the transformers backend, with each query's prefix computed once.

Every prompt of a request starts with the same query part (system prompt, instruction,
query: ~70 tokens of a ~500-token prompt). With ``share_prefixes`` a batch holds that
part once per request, as a sequence of its own, and each prompt only its own tokens
(document + suffix) at positions that continue after the prefix. Attention then reads
each prompt's keys/values as ``prefix + own`` through ``key_index``: a gather of rows
of the packed key/value tensors. The arithmetic is that of the whole prompt; the
projections and MLPs run on ~13% fewer tokens.

Without sharing, each prompt is one sequence and ``key_index`` is None.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate


@dataclass(frozen=True)
class PromptParts:
    """One prompt as ``prefix + rest``; prompts with equal ``prefix_key`` share the prefix."""

    prefix_key: Hashable
    prefix: Sequence[int]
    rest: Sequence[int]


@dataclass
class PackedBatch:
    """What one packed forward pass needs (plain lists; the backend makes tensors)."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    query_lengths: list[int] = field(default_factory=list)  # per sequence
    key_lengths: list[int] = field(default_factory=list)  # per sequence (prefix + own)
    key_index: list[int] | None = None  # rows of the packed K/V each sequence reads
    last_rows: list[int] = field(default_factory=list)  # each prompt's last token

    @property
    def cu_query(self) -> list[int]:
        """[0, n0, n0+n1, ...] over the query rows."""
        return [0, *accumulate(self.query_lengths)]

    @property
    def cu_key(self) -> list[int]:
        """[0, k0, k0+k1, ...] over the gathered key rows."""
        return [0, *accumulate(self.key_lengths)]


def pack(prompts: Sequence[PromptParts], share_prefixes: bool) -> PackedBatch:
    """Lay ``prompts`` out back to back (see the module docstring)."""
    batch = PackedBatch()
    if not share_prefixes:
        for parts in prompts:
            whole = [*parts.prefix, *parts.rest]
            batch.ids += whole
            batch.positions += range(len(whole))
            batch.query_lengths.append(len(whole))
            batch.last_rows.append(len(batch.ids) - 1)
        batch.key_lengths = batch.query_lengths
        return batch
    key_index: list[int] = []
    prefix_rows: dict[Hashable, range] = {}
    for parts in prompts:
        if parts.prefix_key in prefix_rows or not parts.rest or not parts.prefix:
            continue
        start = len(batch.ids)
        rows = prefix_rows[parts.prefix_key] = range(start, start + len(parts.prefix))
        batch.ids += parts.prefix
        batch.positions += range(len(parts.prefix))
        batch.query_lengths.append(len(parts.prefix))
        batch.key_lengths.append(len(parts.prefix))
        key_index += rows
    for parts in prompts:
        prefix = prefix_rows.get(parts.prefix_key, range(0)) if parts.rest else range(0)
        rest = parts.rest if parts.rest else [*parts.prefix]  # nothing to share: whole prompt
        start = len(batch.ids)
        batch.ids += rest
        batch.positions += range(len(prefix), len(prefix) + len(rest))
        batch.query_lengths.append(len(rest))
        batch.key_lengths.append(len(prefix) + len(rest))
        key_index += prefix
        key_index += range(start, start + len(rest))
        batch.last_rows.append(len(batch.ids) - 1)
    batch.key_index = key_index
    return batch
