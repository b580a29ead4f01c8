"""The batches the transformers backend runs at startup, so that no request pays for a
first time: every batch form its scheduler makes, at the sizes where something is built
on first use.

- ``largest``: the token budget filled (``max_batch_tokens``, at most ``infer_batch_size``
  prompts). The CUDA caching allocator reserves its peak once, and cuBLAS / inductor's
  kernels see the largest row counts. GPU only: on a CPU nothing is cached by size.
- ``single``: one short prompt. dynamo specialises sizes 0 and 1, so a batch of one prompt
  (one row read out of the last layer, one padded row) is a graph of its own.
- ``pair``: two prompts of one query (the smallest size of the general graph).
- ``queries``: several queries' prompts in one call (the scheduler coalesces requests),
  each sharing its query part, with token and row counts that are not multiples of 16
  (Triton specialises integer arguments on divisibility by 16 and on 1).

The compile batch (``Qwen3TransformersBackend._warm_up_batch``) and the CUDA graphs'
shapes (captured at startup) come before these.
"""

from __future__ import annotations

from dataclasses import dataclass

from reranker.backends.transformers.packing import PromptParts

# Token ids of the warm-up prompts start here (above the pad id): any ids the model has.
_QUERIES = 4  # distinct query parts in the batches that hold several


@dataclass(frozen=True)
class WarmUpBatch:
    """One batch run at startup: a name for the log and its prompts."""

    name: str
    prompts: list[PromptParts]

    @property
    def tokens(self) -> int:
        """Tokens of the prompts, each whole (before any prefix is shared)."""
        return sum(len(p.prefix) + len(p.rest) for p in self.prompts)


def _prompts(first_id: int, count: int, length: int, queries: int) -> list[PromptParts]:
    """``count`` prompts of about ``length`` tokens over ``queries`` query parts (an
    eighth of each prompt, at least one token); lengths vary by up to 7 tokens."""
    prefix = max(1, length // 8)
    out = []
    for k in range(count):
        rest = max(1, length - prefix - k % 8)
        query = k % queries
        out.append(PromptParts(query, [first_id + query] * prefix, [first_id + 5] * rest))
    return out


def warm_up_batches(
    pad_id: int,
    max_batch_tokens: int,
    infer_batch_size: int,
    max_model_len: int,
    on_gpu: bool,
    packed: bool = True,
) -> list[WarmUpBatch]:
    """The batches to run at startup (see the module docstring), smallest first, the
    largest last. ``packed``: batches cost their tokens; else (padded) every prompt
    costs the longest one's, so the largest batch is not filled further."""
    first_id = pad_id + 1
    batches = [
        WarmUpBatch("single", _prompts(first_id, 1, min(12, max_model_len), 1)),
        WarmUpBatch("pair", _prompts(first_id, min(2, infer_batch_size), 24, 1)),
        WarmUpBatch(
            "queries",
            _prompts(first_id, min(7, infer_batch_size), min(45, max_model_len), _QUERIES),
        ),
    ]
    if on_gpu:
        # as many prompts as a batch may hold, as long as the budget lets them be
        length = min(max_model_len, max(16, max_batch_tokens // max(1, infer_batch_size)))
        count = max(1, min(infer_batch_size, max_batch_tokens // length))
        largest = _prompts(first_id, count, length, _QUERIES)
        # the variation in length leaves room: fill what is left of the budget
        room = max_batch_tokens - WarmUpBatch("", largest).tokens
        last = largest[-1]
        grown = min(room, max_model_len - len(last.prefix) - len(last.rest))
        if grown > 0 and packed:
            rest = [*last.rest, *[first_id + 5] * grown]
            largest[-1] = PromptParts(last.prefix_key, last.prefix, rest)
        batches.append(WarmUpBatch("largest", largest))
    return batches
