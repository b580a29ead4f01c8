"""Packed batch layout with shared query prefixes (pure Python, no torch)."""

from __future__ import annotations

from reranker.backends.transformers.packing import PromptParts, pack

A, B = [1, 2, 3], [7, 8]  # two requests' query parts
PROMPTS = [
    PromptParts("a", A, [10, 11]),
    PromptParts("b", B, [20]),
    PromptParts("a", A, [12, 13, 14]),
]


def whole_prompts(batch, prompts):
    """Rebuild each prompt's full token ids from what its last row attends to."""
    keys = batch.key_index or list(range(len(batch.ids)))
    cu_q, cu_k = batch.cu_query, batch.cu_key
    out = []
    for last in batch.last_rows:
        seq = next(i for i in range(len(cu_q) - 1) if cu_q[i] <= last < cu_q[i + 1])
        out.append([batch.ids[keys[r]] for r in range(cu_k[seq], cu_k[seq + 1])])
    return out


def test_unshared_packing_is_each_prompt_back_to_back():
    batch = pack(PROMPTS, share_prefixes=False)
    assert list(batch.ids) == [1, 2, 3, 10, 11, 7, 8, 20, 1, 2, 3, 12, 13, 14]
    assert batch.positions == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert batch.cu_query == batch.cu_key == [0, 5, 8, 14]
    assert batch.key_index is None
    assert batch.last_rows == [4, 7, 13]


def test_shared_prefixes_appear_once_and_positions_continue_after_them():
    batch = pack(PROMPTS, share_prefixes=True)
    # prefixes first (one per request), then each prompt's own tokens
    assert list(batch.ids) == [1, 2, 3, 7, 8, 10, 11, 20, 12, 13, 14]
    assert batch.positions == [0, 1, 2, 0, 1, 3, 4, 2, 3, 4, 5]
    assert batch.query_lengths == [3, 2, 2, 1, 3]
    assert batch.key_lengths == [3, 2, 5, 3, 6]
    assert batch.key_index == [0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 3, 4, 7, 0, 1, 2, 8, 9, 10]
    assert batch.last_rows == [6, 7, 10]
    expected = [[*p.prefix, *p.rest] for p in PROMPTS]
    assert whole_prompts(batch, PROMPTS) == expected
    assert whole_prompts(pack(PROMPTS, share_prefixes=False), PROMPTS) == expected


def test_a_prompt_with_nothing_after_its_prefix_is_packed_whole():
    prompts = [PromptParts("a", A, []), PromptParts("b", B, [20])]
    batch = pack(prompts, share_prefixes=True)
    assert whole_prompts(batch, prompts) == [A, [*B, 20]]
    assert batch.ids.count(1) == 1  # the lone prefix is not packed a second time
