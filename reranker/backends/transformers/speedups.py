"""Speed-ups for the transformers backend's Qwen3 decoder that leave the model's maths alone.

- :func:`fuse_rms_norms`: every ``*RMSNorm`` module runs ``torch.nn.functional.rms_norm``,
  one fused kernel instead of transformers' seven elementwise ones (square, mean, rsqrt,
  two casts, two products).
- :func:`compile_layers`: each decoder layer is compiled with ``torch.compile`` on its own
  ("regional compilation"): all layers share one compiled graph, so compiling takes
  seconds rather than minutes, and dynamic shapes cover every batch size.
- :func:`last_layer_at_rows`: the last decoder layer runs its MLP (and, in packed
  batches, its queries, attention and output projection) only at the rows the caller
  reads (each prompt's last token) instead of at every token.
- :func:`carry_residuals`: each layer hands its last residual add to the next one, so
  that a compiled layer does it in one kernel with its input RMSNorm (under fp8, a norm
  with a quantising form, ``fp8.fuse_norm_quant``, also quantises the normed rows there).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

# Every decoder layer is the same code: allow more compiled variants than dynamo's default 8
# before it gives up and runs a layer eagerly.
_RECOMPILE_LIMIT = 64


def _fused_rms_norm(self: Any, hidden_states: Any) -> Any:
    import torch.nn.functional as F

    return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)


def fuse_rms_norms(model: Any) -> int:
    """Give each RMSNorm module of ``model`` the fused forward; returns how many."""
    count = 0
    for module in model.modules():
        is_rms_norm = type(module).__name__.endswith("RMSNorm")
        if is_rms_norm and hasattr(module, "weight") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_fused_rms_norm, module)
            count += 1
    return count


def compile_layers(
    layers: Iterable[Any], warm_up: Callable[[], object], cpp_wrapper: bool = False
) -> None:
    """``torch.compile`` each layer (dynamic shapes) and run ``warm_up`` to build the graph.

    With ``cpp_wrapper`` inductor launches each graph's kernels from generated C++
    instead of Python (less host time per layer call; a C++ compiler builds it at
    startup). On any failure the layers go back to eager mode and the exception
    propagates.
    """
    import torch

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))
    layers = list(layers)
    for layer in layers:
        layer.compile(dynamic=True, options={"cpp_wrapper": cpp_wrapper})
    try:
        warm_up()
    except Exception:
        for layer in layers:
            layer._compiled_call_impl = None
        raise


def _attention_at_rows(attn: Any, normed: Any, rows: Any, row_bounds: Any, **kwargs: Any) -> Any:
    """``attn`` (a Llama/Qwen-style self-attention module) at ``rows`` of ``normed`` only:
    keys and values from every token, queries from the rows alone, one per sequence
    (``row_bounds``: [0, r0, r0+r1, ...] over the rows, as ``cu_seq_lens_q`` is over the
    tokens). Only for the packed attention of ``packed_attention``, which aligns a
    sequence's queries with its last keys: a row's one query sees its whole sequence."""
    modeling = sys.modules[type(attn).__module__]
    position_embeddings = kwargs.pop("position_embeddings")
    kwargs.pop("attention_mask", None)
    kwargs.pop("past_key_values", None)
    picked = normed[:, rows]
    heads = (-1, attn.head_dim)
    q = attn.q_norm(attn.q_proj(picked).unflatten(-1, heads)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(normed).unflatten(-1, heads)).transpose(1, 2)
    v = attn.v_proj(normed).unflatten(-1, heads).transpose(1, 2)
    cos, sin = position_embeddings
    q, _ = modeling.apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])
    k, _ = modeling.apply_rotary_pos_emb(k, k, cos, sin)
    kwargs.setdefault("cu_seq_lens_k", kwargs["cu_seq_lens_q"])
    kwargs.setdefault("max_length_k", kwargs["max_length_q"])
    # 2, not 1: with a longest query of 1 FlashAttention-2 takes every sequence to have
    # exactly one query (it swaps the query and head-group axes), and prefix sequences
    # have none. An upper bound is all the kernels need.
    kwargs.update(cu_seq_lens_q=row_bounds, max_length_q=2)
    attend = modeling.ALL_ATTENTION_FUNCTIONS[attn.config._attn_implementation]
    out, _ = attend(attn, q, k, v, None, scaling=attn.scaling, **kwargs)
    return attn.o_proj(out.reshape(*picked.shape[:-1], -1))


def last_layer_at_rows(decoder: Any) -> None:
    """Wrap ``decoder``'s last layer (a Llama/Qwen-style pre-norm layer: input norm, self
    attention, residual, post-attention norm, MLP, residual) so that, given a
    ``last_rows`` keyword argument (a 1-D index tensor), it returns only those rows and
    runs its MLP only there. With ``row_bounds`` too (packed batches: see
    :func:`_attention_at_rows`) its attention also computes queries, attention and the
    output projection at those rows only; without, attention covers every token. Without
    ``last_rows`` the layer runs as before.

    A reranker reads one hidden state per prompt; at every other token the last layer's
    MLP, query and output projections and attention (about 85% of that layer's matmul
    work) would be computed for nothing.
    """
    import torch

    class LastLayerAtRows(torch.nn.Module):
        reads_last_rows = True

        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer

        def forward(
            self, hidden_states: Any, last_rows: Any = None, row_bounds: Any = None, **kwargs: Any
        ) -> Any:
            layer = self.layer
            if last_rows is None:
                return layer(hidden_states, **kwargs)
            normed = layer.input_layernorm(hidden_states)
            if row_bounds is None:
                mixed, _ = layer.self_attn(hidden_states=normed, **kwargs)
                mixed = mixed[:, last_rows]
            else:
                mixed = _attention_at_rows(layer.self_attn, normed, last_rows, row_bounds, **kwargs)
            rows = hidden_states[:, last_rows] + mixed
            return rows + layer.mlp(layer.post_attention_layernorm(rows))

    layers = decoder.layers
    if not getattr(layers[-1], "reads_last_rows", False):
        layers[-1] = LastLayerAtRows(layers[-1])


def carry_residuals(decoder: Any) -> int:
    """Move each decoder layer's final residual add into the next layer: every layer but
    the last returns ``(residual, mlp_output)`` instead of their sum, and the next layer
    adds them before its input RMSNorm. Returns how many layers hand their add on (0
    where the layers are not Llama/Qwen-style pre-norm ones, or already do: the decoder is
    then left as it was). Apply it after :func:`last_layer_at_rows`.

    The maths is the same; what changes is where the add runs. Compiled one layer at a
    time (:func:`compile_layers`), a layer's final add is a kernel of its own (it follows
    the MLP's last matmul, which inductor leaves to cuBLAS): it reads two activations and
    writes one, which the next layer's norm reads again. Done at the start of the next
    layer, inductor fuses the add into the norm's kernel: one pass fewer over the hidden
    states per layer. The last layer adds the pair it gets and then runs as it did, so
    the decoder's output is a tensor as before.
    """
    import torch

    class HandsResidualOn(torch.nn.Module):
        """A pre-norm layer that returns (residual, MLP output) for the next to add."""

        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, hidden_states: Any, **kwargs: Any) -> tuple[Any, Any]:
            layer = self.layer
            hidden_states, normed = _add_and_norm(layer.input_layernorm, hidden_states)
            mixed, _ = layer.self_attn(hidden_states=normed, **kwargs)
            pair = (hidden_states, mixed)
            hidden_states, normed = _add_and_norm(layer.post_attention_layernorm, pair)
            return hidden_states, layer.mlp(normed)

    class AddsResidualFirst(torch.nn.Module):
        """The last layer: adds the pair it is handed, then runs as it did."""

        adds_carried_residual = True

        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, hidden_states: Any, **kwargs: Any) -> Any:
            return self.layer(_sum_of(hidden_states), **kwargs)

    layers = decoder.layers
    if len(layers) < 2 or getattr(layers[-1], "adds_carried_residual", False):
        return 0
    parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    if not all(hasattr(layer, part) for layer in layers[:-1] for part in parts):
        return 0
    for index in range(len(layers) - 1):
        layers[index] = HandsResidualOn(layers[index])
    layers[-1] = AddsResidualFirst(layers[-1])
    return len(layers) - 1


def _add_and_norm(norm: Any, hidden_states: Any) -> tuple[Any, Any]:
    """(the sum of ``hidden_states``: a tensor, or a (residual, delta) pair, and its
    ``norm``); through the norm's fused add + norm + fp8 quantisation where it has one
    (``fp8.fuse_norm_quant``: the normed rows then come as ``QuantizedRows``)."""
    fused = getattr(norm, "add_norm_quant", None)
    if fused is not None:
        return fused(hidden_states)  # type: ignore[no-any-return]
    hidden_states = _sum_of(hidden_states)
    return hidden_states, norm(hidden_states)


def _sum_of(hidden_states: Any) -> Any:
    """A layer's input: the hidden states, or the previous layer's (residual, delta)."""
    if isinstance(hidden_states, tuple):
        residual, delta = hidden_states
        return residual + delta
    return hidden_states
