"""Loading a tokenizer or model from a hub id or a local directory, with one clear error."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from reranker.errors import ModelUnavailable

T = TypeVar("T")

OFFLINE_HINT = (
    "If this machine cannot download weights, build the offline test model and point the "
    "service at it: `python -m reranker.testing.tiny_qwen3 .cache/tiny-qwen3` then "
    "`RERANK_MODEL=.cache/tiny-qwen3` (or set model_name to a local copy of the weights)."
)


def load_or_explain(model_name: str, what: str, load: Callable[[], T]) -> T:
    """Run ``load``; turn a missing model or a failed download into :class:`ModelUnavailable`."""
    try:
        return load()
    except (OSError, ValueError) as exc:
        local = Path(model_name).expanduser()
        if local.exists():
            raise ModelUnavailable(f"cannot load the {what} from {local}: {exc}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        raise ModelUnavailable(
            f"cannot load the {what} of {model_name!r} "
            f"({'HF_HUB_OFFLINE is set' if offline else 'not a local directory and the hub is unreachable or has no such model'}). "
            + OFFLINE_HINT
        ) from exc


def hf_tokenize_fn(tokenizer: object) -> Callable[[list[str]], list[list[int]]]:
    """A ``tokenize(texts) -> ids`` function over a HF tokenizer, no special tokens added."""

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # type: ignore[operator]

    return tokenize
