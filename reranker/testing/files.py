"""File modes of the test models the builders write."""

from __future__ import annotations

from pathlib import Path


def weights_like_config(folder: Path) -> None:
    """Give the weight files in ``folder`` the permissions of its ``config.json``:
    transformers writes safetensors readable by their owner only, the other files as the
    umask says, so a service running as another user could read the config but not the
    weights."""
    mode = (folder / "config.json").stat().st_mode & 0o777
    for weights in folder.glob("*.safetensors"):
        weights.chmod(mode)
