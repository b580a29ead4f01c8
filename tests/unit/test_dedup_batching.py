"""dedup and length batching."""

from __future__ import annotations

import random

import pytest

from reranker.core.batching import padded_tokens, plan_batches
from reranker.core.dedup import deduplicate_with_positions


def test_dedup_keeps_first_seen_order_and_positions():
    texts = ["b", "a", "b", "c", "a", "b"]
    unique, pos = deduplicate_with_positions(texts)
    assert unique == ["b", "a", "c"]
    assert pos == [0, 1, 0, 2, 1, 0]
    assert [unique[p] for p in pos] == texts


def test_dedup_empty():
    assert deduplicate_with_positions([]) == ([], [])


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_batches_cover_every_index_once_and_respect_budget(seed, padded):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 200))]
    budget, size = rng.choice([256, 1000, 4096]), rng.choice([None, 1, 7, 64])
    batches = plan_batches(lengths, budget, size, padded=padded)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        cost = padded_tokens(lengths, b) if padded else sum(lengths[i] for i in b)
        assert len(b) == 1 or cost <= budget
        assert size is None or len(b) <= size


def test_packed_batches_count_real_tokens_not_padding():
    lengths = [10, 10, 10, 100]
    # Padded, the long item would cost 4 x 100 = 400 tokens; packed it costs 130.
    assert plan_batches(lengths, 200) == [[0, 1, 2], [3]]
    assert plan_batches(lengths, 200, padded=False) == [[0, 1, 2, 3]]


def test_sorted_batches_group_similar_lengths():
    lengths = [100, 5, 100, 5, 100, 5]
    batches = plan_batches(lengths, max_batch_tokens=300)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[5, 5, 5], [100, 100, 100]]
    unsorted = plan_batches(lengths, max_batch_tokens=300, sort_by_length=False)
    assert sum(padded_tokens(lengths, b) for b in unsorted) > sum(
        padded_tokens(lengths, b) for b in batches
    )


def test_oversized_item_gets_its_own_batch():
    assert plan_batches([10, 5000, 10], max_batch_tokens=100) == [[0, 2], [1]]


def test_bad_budget_is_an_error():
    with pytest.raises(ValueError):
        plan_batches([1], 0)
    with pytest.raises(ValueError):
        plan_batches([1], 10, 0)
