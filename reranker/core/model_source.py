"""Where a model's files come from: a local folder, the local hub cache, or the hub.

Checked before anything heavy is loaded, so that a machine without hub access learns in
seconds what to do instead, not after a minute of download retries. Light: no torch, no
transformers.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from reranker.core.errors import ModelUnavailable

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_MODEL_DIR = ".cache/tiny-qwen3"
TRUE_VALUES = ("1", "true", "yes", "on")

Source = Literal["local", "cache", "hub"]


def offline_hint() -> str:
    """The exact commands that build the offline test model and point the reranker at it."""
    script = Path(sys.executable).parent / "reranker"
    if script.exists():
        try:
            command = str(script.absolute().relative_to(Path.cwd()))
        except ValueError:
            command = str(script.absolute())
    else:
        command = "reranker"
    return (
        "Without hub access, build the offline test model (real tokenizer, random weights): "
        f"`{shlex.quote(command)} build-test-model {OFFLINE_MODEL_DIR}`, then set "
        f"`RERANK_MODEL={OFFLINE_MODEL_DIR}` for the service and the CLI (in-process: "
        f"model_name={OFFLINE_MODEL_DIR!r}), or point model_name at a local copy of the "
        "weights"
    )


def hub_offline() -> bool:
    """Whether hub access is switched off for this process (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_VALUES


def check_model_source(model_name: str, *, local_files_only: bool = False) -> Source:
    """Where ``model_name`` will load from; :class:`ModelUnavailable` at once if nowhere.

    A folder must hold a ``config.json``. A hub id must be in the local hub cache, or the
    hub must answer within ``HUB_PROBE_TIMEOUT_S``. A cached hub id whose hub cannot be
    reached switches this process to offline mode, so the loaders read the cache instead
    of retrying the hub.
    """
    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} holds no config.json: it is not a model folder")
        return "local"
    if _looks_like_path(model_name):
        raise ModelUnavailable(f"model folder {model_name} does not exist. {offline_hint()}")
    cached = _in_hub_cache(model_name)
    if local_files_only or hub_offline():
        if cached:
            return "cache"
        switch = "local_files_only is set" if local_files_only else "HF_HUB_OFFLINE is set"
        raise ModelUnavailable(
            f"{model_name!r} is not in the local hub cache and {switch}. {offline_hint()}"
        )
    if _hub_answers(model_name):
        return "hub"
    if cached:
        logger.warning("the hub cannot be reached: using the cached copy of %s", model_name)
        _go_offline()
        return "cache"
    raise ModelUnavailable(
        f"cannot load {model_name!r}: it is not a local folder, not in the local hub cache, "
        f"and the hub ({_endpoint()}) cannot be reached. {offline_hint()}"
    )


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name[:1]


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _in_hub_cache(model_name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
    except Exception:  # a malformed id: the loader reports it
        return False


def _hub_answers(model_name: str) -> bool:
    """One request, no retries: any HTTP answer (even 401/404) means the hub is there;
    the loader then reports what it says."""
    request = urllib.request.Request(f"{_endpoint()}/api/models/{model_name}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # no route, no name resolution, refused, timed out
        return False


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # for processes started from here (vLLM's engine)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable at import
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
