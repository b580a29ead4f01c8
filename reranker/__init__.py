"""Qwen3-Reranker scoring behind one protocol and interchangeable backends.

Importing this package is cheap: backends (and torch / vLLM / transformers) are loaded
only when one is chosen, through :func:`reranker.core.registry.load_backend`.
"""

from importlib import metadata as _metadata

from reranker.core.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidRequest,
    Overloaded,
    RerankerError,
    UnknownBackend,
)

__all__ = [
    "__version__",
    "BackendUnavailable",
    "ConfigError",
    "InvalidRequest",
    "Overloaded",
    "RerankerError",
    "UnknownBackend",
]

try:  # the installed distribution's version (pyproject.toml)
    __version__ = _metadata.version("reranker")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
