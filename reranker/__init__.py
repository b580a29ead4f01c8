"""Qwen3-Reranker scoring behind one protocol and interchangeable backends.

Importing this package is cheap: backends (and torch / vLLM / transformers) are loaded
only when one is chosen, through :func:`reranker.registry.load_backend`.
"""

from reranker.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidRequest,
    Overloaded,
    RerankerError,
    UnknownBackend,
)

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "InvalidRequest",
    "Overloaded",
    "RerankerError",
    "UnknownBackend",
]
__version__ = "0.1.0"
