"""Backends are plugins in the ``reranker.backends`` entry-point group.

List leniently (a broken plugin is reported, not raised); load strictly (the chosen
one fails loudly with a typed error). Only the chosen backend's module is imported.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from reranker.core.errors import BackendUnavailable, UnknownBackend
from reranker.core.protocol import RerankBackend

GROUP = "reranker.backends"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend and whether it can run in this Python environment."""

    name: str
    target: str
    importable: bool
    missing: list[str] = field(default_factory=list)
    error: str | None = None


def backend_names() -> list[str]:
    """Names registered in the entry-point group (nothing is imported)."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def _missing_modules(modules: tuple[str, ...]) -> list[str]:
    missing = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):
            missing.append(module)
    return missing


def load_backend_class(name: str) -> type[RerankBackend]:
    """The backend class registered as ``name``; its heavy dependencies are not imported."""
    from stevedore import driver
    from stevedore.exception import NoMatches

    known = backend_names()
    if name not in known:
        raise UnknownBackend(name, known)
    try:
        manager = driver.DriverManager(
            namespace=GROUP, name=name, invoke_on_load=False, on_load_failure_callback=_reraise
        )
    except NoMatches as exc:  # pragma: no cover - name checked above
        raise UnknownBackend(name, known) from exc
    except ImportError as exc:
        raise BackendUnavailable(name, f"importing it failed: {exc}") from exc
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, RerankBackend)):
        raise BackendUnavailable(name, f"{cls!r} is not a RerankBackend subclass")
    return cls


def _reraise(manager: Any, entrypoint: Any, exc: BaseException) -> None:
    raise exc


def list_backends() -> list[BackendInfo]:
    """Every registered backend, with whether its dependencies are importable here."""
    infos = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            cls = load_backend_class(ep.name)
        except Exception as exc:  # list leniently: report, carry on
            logger.warning("backend %s cannot be loaded: %s", ep.name, exc)
            infos.append(BackendInfo(ep.name, ep.value, False, error=str(exc)))
            continue
        missing = _missing_modules(cls.requires)
        infos.append(BackendInfo(ep.name, ep.value, not missing, missing))
    return infos


def load_backend(name: str, options: Any = None) -> RerankBackend:
    """Build the backend ``name`` with ``options`` (a mapping or its Options model).

    A model that cannot be found fails here at once (:class:`ModelUnavailable`), before
    the backend imports its engine.
    """
    cls = load_backend_class(name)
    missing = _missing_modules(cls.requires)
    if missing:
        raise BackendUnavailable(name, f"missing Python packages: {', '.join(missing)}")
    raw = options.model_dump(exclude_unset=True) if isinstance(options, BaseModel) else options
    cls.check_model(cls.Options.model_validate(dict(raw or {})))
    return cls(options)
