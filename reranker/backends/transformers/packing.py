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

from array import array
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
    """What one packed forward pass needs. Token ids are an int64 ``array``; positions
    and key rows are kept as runs of consecutive integers (a start and a length each),
    so the host builds no per-token lists for them: the backend expands them on the
    device, and :attr:`positions` / :attr:`key_index` expand them here."""

    ids: array[int] = field(default_factory=lambda: array("q"))
    query_lengths: list[int] = field(default_factory=list)  # per sequence
    key_lengths: list[int] = field(default_factory=list)  # per sequence (prefix + own)
    position_starts: list[int] = field(default_factory=list)  # per sequence
    # rows of the packed K/V that the sequences read, in order: runs (start, length)
    key_run_starts: list[int] | None = None
    key_run_lengths: list[int] = field(default_factory=list)
    last_rows: list[int] = field(default_factory=list)  # each prompt's last token
    # per sequence: how many of the last rows it holds (1 for a prompt, 0 for a prefix)
    row_counts: list[int] = field(default_factory=list)

    @property
    def cu_query(self) -> list[int]:
        """[0, n0, n0+n1, ...] over the query rows."""
        return [0, *accumulate(self.query_lengths)]

    @property
    def cu_rows(self) -> list[int]:
        """[0, r0, r0+r1, ...] over the last rows: each sequence's rows among them."""
        return [0, *accumulate(self.row_counts)]

    @property
    def cu_key(self) -> list[int]:
        """[0, k0, k0+k1, ...] over the gathered key rows."""
        return [0, *accumulate(self.key_lengths)]

    @property
    def positions(self) -> list[int]:
        """Each token's position id (it restarts at each sequence's start)."""
        return expand_runs(self.position_starts, self.query_lengths)

    @property
    def key_index(self) -> list[int] | None:
        """Rows of the packed K/V each sequence reads, back to back (None: no sharing)."""
        if self.key_run_starts is None:
            return None
        return expand_runs(self.key_run_starts, self.key_run_lengths)


def expand_runs(starts: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """``start, start + 1, ..., start + length - 1`` for each run, back to back."""
    return [
        i
        for start, length in zip(starts, lengths, strict=True)
        for i in range(start, start + length)
    ]


def _append(ids: array[int], tokens: Sequence[int]) -> None:
    if isinstance(tokens, list):
        ids.fromlist(tokens)  # 2x faster than extend
    else:
        ids.extend(tokens)


def pack(prompts: Sequence[PromptParts], share_prefixes: bool) -> PackedBatch:
    """Lay ``prompts`` out back to back (see the module docstring)."""
    batch = PackedBatch()
    if not share_prefixes:
        for parts in prompts:
            _append(batch.ids, parts.prefix)
            _append(batch.ids, parts.rest)
            batch.query_lengths.append(len(parts.prefix) + len(parts.rest))
            batch.position_starts.append(0)
            batch.last_rows.append(len(batch.ids) - 1)
        batch.key_lengths = batch.query_lengths
        batch.row_counts = [1] * len(prompts)
        return batch
    batch.key_run_starts = run_starts = []
    run_lengths = batch.key_run_lengths
    prefix_rows: dict[Hashable, tuple[int, int]] = {}  # prefix key -> (first row, length)
    for parts in prompts:
        if parts.prefix_key in prefix_rows or not parts.rest or not parts.prefix:
            continue
        start, length = len(batch.ids), len(parts.prefix)
        prefix_rows[parts.prefix_key] = (start, length)
        _append(batch.ids, parts.prefix)
        batch.query_lengths.append(length)
        batch.key_lengths.append(length)
        batch.position_starts.append(0)
        batch.row_counts.append(0)
        run_starts.append(start)
        run_lengths.append(length)
    for parts in prompts:
        # a prompt with nothing after its prefix is packed whole, reading no prefix run
        prefix_start, prefix_length = (
            prefix_rows.get(parts.prefix_key, (0, 0)) if parts.rest else (0, 0)
        )
        own = len(parts.rest) if parts.rest else len(parts.prefix)
        start = len(batch.ids)
        _append(batch.ids, parts.rest if parts.rest else parts.prefix)
        batch.query_lengths.append(own)
        batch.key_lengths.append(prefix_length + own)
        batch.position_starts.append(prefix_length)
        run_starts += (prefix_start, start)
        run_lengths += (prefix_length, own)
        batch.last_rows.append(len(batch.ids) - 1)
        batch.row_counts.append(1)
    return batch


def device_columns(batch: PackedBatch) -> tuple[array[int], list[list[int]]]:
    """A packed batch's token ids and the index lists its forward pass needs on the
    device: position runs (starts, lengths), query bounds, last-row bounds, last rows
    and, with shared prefixes, key runs (starts, lengths) and key bounds."""
    columns = [
        batch.position_starts,
        batch.query_lengths,
        batch.cu_query,
        batch.cu_rows,
        batch.last_rows,
    ]
    if batch.key_run_starts is not None:
        columns += [batch.key_run_starts, batch.key_run_lengths, batch.cu_key]
    return batch.ids, columns


def host_buffer(ids: array[int], columns: Sequence[list[int]]) -> array[int]:
    """``ids`` and ``columns`` back to back in one int64 array (one host-to-device copy)."""
    values = array("q", ids)
    for column in columns:
        values.fromlist(column)  # array -> tensor: ~4x faster than torch.tensor(list)
    return values
