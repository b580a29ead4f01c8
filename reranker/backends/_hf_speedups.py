"""Speed-ups for the transformers backend's Qwen3 decoder that leave the model's maths alone.

- :func:`fuse_rms_norms`: every ``*RMSNorm`` module runs ``torch.nn.functional.rms_norm``,
  one fused kernel instead of transformers' seven elementwise ones (square, mean, rsqrt,
  two casts, two products).
- :func:`compile_layers`: each decoder layer is compiled with ``torch.compile`` on its own
  ("regional compilation"): all layers share one compiled graph, so compiling takes
  seconds rather than minutes, and dynamic shapes cover every batch size.
"""

from __future__ import annotations

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


def compile_layers(layers: Iterable[Any], warm_up: Callable[[], object]) -> None:
    """``torch.compile`` each layer (dynamic shapes) and run ``warm_up`` to build the graph.

    On any failure the layers go back to eager mode and the exception propagates.
    """
    import torch

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))
    layers = list(layers)
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        warm_up()
    except Exception:
        for layer in layers:
            layer._compiled_call_impl = None
        raise
