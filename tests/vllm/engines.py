"""Building vLLM backends on the tiny model with CPU-safe settings."""

from __future__ import annotations

from pairs import MAX_MODEL_LEN

from reranker.core.registry import load_backend


def vllm_backend(name: str, model_dir, **overrides):
    """A vLLM backend in fp32, eager, 0.3 of memory: what runs on a CPU-only machine."""
    options = {
        "model_name": str(model_dir),
        "max_model_len": MAX_MODEL_LEN,
        "dtype": "float32",
        "gpu_memory_utilization": 0.3,
        "enforce_eager": True,
        **overrides,
    }
    return load_backend(name, options)
