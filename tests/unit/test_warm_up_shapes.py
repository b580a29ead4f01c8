"""The batches the transformers backend runs at startup (warm_up.warm_up_batches)."""

from __future__ import annotations

from reranker.backends.transformers.packing import pack
from reranker.backends.transformers.warm_up import warm_up_batches


def test_cpu_gets_the_small_forms_only():
    batches = warm_up_batches(0, 16384, 64, 4096, on_gpu=False)
    assert [b.name for b in batches] == ["single", "pair", "queries"]
    single, pair, queries = batches
    assert len(single.prompts) == 1  # dynamo specialises size 1: a graph of its own
    assert len(pair.prompts) == 2
    assert len({p.prefix_key for p in queries.prompts}) > 1  # several queries in one call
    # Triton specialises on divisibility by 16: a packed batch that is not a multiple
    packed = pack(queries.prompts, share_prefixes=True)
    assert len(packed.ids) % 16 and len(packed.last_rows) % 16


def test_gpu_fills_the_token_budget_with_as_many_prompts_as_a_batch_holds():
    batches = warm_up_batches(0, 65536, 256, 4096, on_gpu=True)
    assert [b.name for b in batches][-1] == "largest"
    largest = batches[-1]
    assert len(largest.prompts) == 256
    assert largest.tokens == 65536
    assert all(len(p.prefix) + len(p.rest) <= 4096 for p in largest.prompts)
    assert len({p.prefix_key for p in largest.prompts}) > 1


def test_a_small_budget_or_a_short_model_length_is_respected():
    for budget, rows, max_len in ((4096, 256, 512), (30000, 8, 1024), (100, 4, 64)):
        largest = warm_up_batches(3, budget, rows, max_len, on_gpu=True)[-1]
        assert len(largest.prompts) <= rows
        assert largest.tokens <= budget
        assert all(len(p.prefix) + len(p.rest) <= max_len for p in largest.prompts)
        assert all(t > 3 for p in largest.prompts for t in (*p.prefix, *p.rest))  # not pad


def test_a_padded_batch_stays_within_the_budget_at_its_longest_prompt():
    largest = warm_up_batches(3, 16384, 64, 4096, on_gpu=True, packed=False)[-1]
    longest = max(len(p.prefix) + len(p.rest) for p in largest.prompts)
    assert len(largest.prompts) * longest <= 16384
