"""Length-aware batching: order by token length, cut under a token budget."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_size: int | None = None,
    sort_by_length: bool = True,
    padded: bool = True,
) -> list[list[int]]:
    """Group item indices into batches whose size stays under ``max_batch_tokens``.

    With ``padded`` the size of a batch is ``len(batch) * max(length in batch)``, which is
    what a padded forward pass really costs; without it (packed batches) it is the sum of
    the lengths. With ``sort_by_length`` the items are taken shortest
    first, so each batch holds items of similar length and wastes little padding. An item
    longer than the budget on its own still gets a batch of one. Every index appears in
    exactly one batch; callers scatter results back by index, so input order is restored.
    """
    if max_batch_tokens <= 0:
        raise ValueError(f"max_batch_tokens must be > 0, got {max_batch_tokens}")
    if max_batch_size is not None and max_batch_size <= 0:
        raise ValueError(f"max_batch_size must be > 0, got {max_batch_size}")
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for idx in order:
        new_longest = max(longest, lengths[idx])
        too_many = max_batch_size is not None and len(current) >= max_batch_size
        size = (len(current) + 1) * new_longest if padded else total + lengths[idx]
        if current and (too_many or size > max_batch_tokens):
            batches.append(current)
            current, new_longest, total = [], lengths[idx], 0
        current.append(idx)
        longest = new_longest
        total += lengths[idx]
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batch: Sequence[int]) -> int:
    """Tokens a padded forward pass over ``batch`` processes (padding included)."""
    return len(batch) * max((lengths[i] for i in batch), default=0)
