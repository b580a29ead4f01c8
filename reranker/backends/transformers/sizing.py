"""Batch sizes of ``qwen3_transformers`` on a GPU, fitted to the model's size and the
memory the GPU has free once the weights are loaded.

The defaults (``max_batch_tokens`` 65536, ``infer_batch_size`` 256 and
``cuda_graph_max_tokens`` 32768 with packed batches) are sized for Qwen3-Reranker-0.6B,
whose batch of 65536 tokens needs about 2 GiB of activations. A token of the 8B model
holds about 3.3 times as much: on a card that the 8B's 16 GB of weights nearly fill, the
defaults would run out of memory. :func:`fit_batch_sizes` keeps the defaults where they
fit (the 0.6B model on any card of 8 GB or more) and lowers them, in proportion, where
they do not. Pure arithmetic: the backend reads the model's config and the free memory.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

GIB = 2**30
# Share of the memory free after loading that a batch's activations may take; the rest
# is headroom: the caching allocator's fragmentation, cuBLAS and attention workspaces,
# the compiled layers' buffers, other processes' growth.
ACTIVATION_SHARE = 0.6
# Fitted token counts are multiples of this (the CUDA graphs' token step) and no smaller.
TOKEN_STEP = 2048


@dataclass(frozen=True)
class ModelDims:
    """The dimensions of a decoder that a batch's activation memory depends on."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int

    @classmethod
    def of(cls, config: Any) -> ModelDims:
        """The dimensions of a transformers config (Qwen3's, or any Llama-like one)."""
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            num_attention_heads=heads,
            num_key_value_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            num_hidden_layers=int(config.num_hidden_layers),
        )

    def activation_bytes_per_token(self, dtype_bytes: int) -> int:
        """Peak bytes one token of a batch holds inside a decoder layer (layers run one
        after another and free what they made): the residual stream and its normalised
        copy (2 x hidden), the MLP's gate, up and gated product (3 x intermediate), and
        a row of queries, keys and values. 0.6B in bfloat16: 30 KiB; 4B: 79 KiB; 8B:
        100 KiB. An upper bound: fused kernels and the compiled layers hold less."""
        qkv = (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
        return dtype_bytes * (2 * self.hidden_size + 3 * self.intermediate_size + qkv)


@dataclass(frozen=True)
class BatchSizes:
    """Batch sizes of a backend, and whether they were lowered to fit memory."""

    max_batch_tokens: int
    infer_batch_size: int
    cuda_graph_max_tokens: int
    limited_by_memory: bool = False


def fit_batch_sizes(
    dims: ModelDims,
    free_bytes: int,
    dtype_bytes: int,
    defaults: BatchSizes,
    graphs: bool,
    fixed: Collection[str] = (),
) -> BatchSizes:
    """``defaults`` where their activations fit :data:`ACTIVATION_SHARE` of
    ``free_bytes`` (the GPU's free memory with the weights loaded), else the largest
    sizes, in the defaults' proportions, that do; the sizes named in ``fixed`` (set by
    the user) keep their values, the others shrink around them.

    A batch of ``max_batch_tokens`` tokens runs while, with ``graphs``, the CUDA graphs'
    memory pool holds the activations of one of ``cuda_graph_max_tokens`` tokens (capped
    by ``max_batch_tokens``), so both count. Token counts are multiples of
    :data:`TOKEN_STEP` (at least one step); ``infer_batch_size`` keeps its ratio to
    ``max_batch_tokens`` (256 pairs to 65536 tokens: prompts of 256 tokens or more on
    average fill a batch by tokens first). Where even the least sizes do not fit, the
    least sizes (the backend warns).
    """
    tokens, pairs, graph = (
        defaults.max_batch_tokens,
        defaults.infer_batch_size,
        defaults.cuda_graph_max_tokens,
    )
    room = room_tokens(dims, free_bytes, dtype_bytes)

    def need(sizes: BatchSizes) -> int:
        batch = sizes.max_batch_tokens
        return batch + (min(sizes.cuda_graph_max_tokens, batch) if graphs else 0)

    if need(defaults) <= room:
        return defaults
    candidate = defaults
    for budget in range(tokens // TOKEN_STEP * TOKEN_STEP, 0, -TOKEN_STEP):
        batch = tokens if "max_batch_tokens" in fixed else budget
        candidate = BatchSizes(
            max_batch_tokens=batch,
            infer_batch_size=(
                pairs if "infer_batch_size" in fixed else max(1, pairs * batch // tokens)
            ),
            cuda_graph_max_tokens=(
                graph
                if "cuda_graph_max_tokens" in fixed or not graphs
                else _steps(graph * budget // tokens)
            ),
            limited_by_memory=True,
        )
        if need(candidate) <= room:
            break
    return candidate if candidate != replace(defaults, limited_by_memory=True) else defaults


def room_tokens(dims: ModelDims, free_bytes: int, dtype_bytes: int) -> int:
    """Tokens whose activations fit :data:`ACTIVATION_SHARE` of ``free_bytes``."""
    per_token = dims.activation_bytes_per_token(dtype_bytes)
    return int(ACTIVATION_SHARE * max(0, free_bytes)) // per_token


def _steps(tokens: int) -> int:
    """``tokens`` rounded down to a multiple of :data:`TOKEN_STEP`, at least one step."""
    return max(TOKEN_STEP, tokens // TOKEN_STEP * TOKEN_STEP)
