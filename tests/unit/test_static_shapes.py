"""Packed batches padded to the fixed shapes of CUDA graphs (pure Python, no torch)."""

from __future__ import annotations

import pytest
from test_packing import PROMPTS, whole_prompts

from reranker.backends.transformers.cuda_graphs import (
    FINE_STEP,
    FINE_UP_TO,
    StaticShape,
    pad_packed,
    shape_tokens,
    static_shapes,
)
from reranker.backends.transformers.packing import device_columns, pack

PAD = 0


@pytest.mark.parametrize("shared", [False, True])
def test_padding_keeps_every_prompt_and_fills_the_shape(shared):
    batch = pack(PROMPTS, share_prefixes=shared)
    shape = StaticShape(tokens=20, keys=30 if shared else 20, sequences=9, rows=4, shared=shared)
    padded = pad_packed(batch, shape, PAD)
    pad, real = 20 - len(batch.ids), len(batch.ids)
    assert len(padded.ids) == 20 and list(padded.ids[real:]) == [PAD] * pad
    assert whole_prompts(padded, PROMPTS)[:3] == whole_prompts(batch, PROMPTS)
    assert padded.last_rows == [*batch.last_rows, 0]
    assert len(padded.query_lengths) == len(padded.key_lengths) == shape.sequences
    assert padded.cu_query[-1] == 20 and padded.cu_key[-1] == shape.keys
    assert len(padded.positions) == 20
    dummy = len(batch.query_lengths)  # the pad tokens' own sequence, then empty ones
    empty = [0] * (shape.sequences - dummy - 1)
    assert padded.query_lengths[dummy:] == [pad, *empty]
    # the dummy's queries read its own rows only; with shared prefixes the rest of the
    # shape's key rows go to a sequence without queries (no attention work)
    spare = shape.keys - sum(batch.key_lengths) - pad
    assert padded.key_lengths[dummy:] == ([pad, spare, *empty[1:]] if shared else [pad, *empty])
    assert spare > 0 or not shared
    ids, columns = device_columns(padded)
    assert [len(ids), *map(len, columns)] == shape.column_sizes()
    if shared:
        index = padded.key_index
        assert len(index) == shape.keys and min(index) >= 0 and max(index) < shape.tokens
        # the dummy sequence reads its own rows first, so its queries see keys
        start = padded.cu_key[dummy]
        assert index[start : start + pad] == list(range(real, 20))


def test_a_batch_fits_only_where_every_size_allows():
    batch = pack(PROMPTS, share_prefixes=True)  # 11 tokens, 5 sequences, 3 rows, 19 keys
    assert StaticShape(tokens=12, keys=20, sequences=7, rows=3, shared=True).fits(batch)
    assert not StaticShape(10, 20, 7, 3, True).fits(batch)  # tokens
    assert not StaticShape(12, 20, 6, 3, True).fits(batch)  # no slot for the spare sequence
    assert not StaticShape(12, 20, 7, 2, True).fits(batch)  # rows
    assert not StaticShape(14, 21, 7, 3, True).fits(batch)  # keys: 19 + 3 pad > 21
    assert not StaticShape(12, 20, 7, 3, False).fits(batch)  # layout
    unshared = pack(PROMPTS, share_prefixes=False)  # 3 sequences: + the dummy
    assert StaticShape(20, 20, 4, 3, False).fits(unshared)
    assert not StaticShape(20, 20, 3, 3, False).fits(unshared)
    with pytest.raises(ValueError, match="does not fit"):
        pad_packed(batch, StaticShape(10, 20, 7, 3, True), PAD)


def test_shape_sizes_are_fine_for_small_batches_and_waste_at_most_an_eighth():
    counts = shape_tokens(32768)
    assert counts[: FINE_UP_TO // FINE_STEP] == list(range(FINE_STEP, FINE_UP_TO + 1, FINE_STEP))
    assert counts[-1] == 32768 and counts == sorted(set(counts))
    coarse = counts[FINE_UP_TO // FINE_STEP - 1 :]
    for smaller, larger in zip(coarse, coarse[1:], strict=False):
        assert larger - smaller <= smaller // 8  # a batch of smaller + 1 tokens: < 1/8 pad
    assert shape_tokens(FINE_STEP - 1) == [] and shape_tokens(38912)[-1] == 36864


def test_static_shapes_step_up_to_the_largest():
    shapes = static_shapes(3 * FINE_STEP + 5, rows=8, shared=True)
    assert [s.tokens for s in shapes] == [FINE_STEP, 2 * FINE_STEP, 3 * FINE_STEP]
    assert all(s.keys == s.tokens * 3 // 2 and s.sequences == 18 and s.rows == 8 for s in shapes)
    assert static_shapes(FINE_STEP - 1, rows=8, shared=False) == []
    unshared = static_shapes(FINE_STEP, rows=8, shared=False)
    assert all(s.keys == s.tokens and s.sequences == 17 for s in unshared)
