"""Settings: ``config/config.yaml`` plus ``RERANK_*`` environment overrides, validated.

File layout::

    services:
      rerank:
        backend: qwen3_transformers
        backends:
          qwen3_transformers: {model_name: ..., ...}
        server: {host: ..., port: ...}

Environment: ``RERANK_CONFIG`` (file path), ``RERANK_BACKEND``, ``RERANK_MODEL`` (the
selected backend's model_name), and one variable per option of the selected backend,
``<prefix><OPTION>`` where the prefix is the backend's ``env_prefix``
(``RERANK_VLLM_`` for the vLLM backends, as before: ``RERANK_VLLM_INFER_BATCH_SIZE``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from reranker.core.errors import ConfigError
from reranker.core.options import BackendOptions

DEFAULT_CONFIG_PATH = Path("config/config.yaml")
DEFAULT_BACKEND = "qwen3_transformers"


class ServerSettings(BaseModel):
    """HTTP service settings (``services.rerank.server``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="Bearer token; unset = no auth")
    on_backend_failure: Literal["exit", "restart"] = Field(
        "exit",
        description="When the backend dies while serving (its engine process is gone): "
        "exit (status 4; the orchestrator restarts the process) or restart it in place",
    )
    max_backend_restarts: int = Field(
        3, ge=0, description="Restarts in place (on_backend_failure: restart) before exiting"
    )
    health_interval_s: float = Field(
        2.0, gt=0.0, description="How often the backend's health is checked"
    )
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="After SIGTERM: how long in-flight requests may take to finish",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="A request head (request line and headers) not complete this long after "
        "the connection opened, or after its first byte on a kept-alive connection: 408, "
        "connection closed",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0.0,
        description="A request body not fully received this long after its head: 408, "
        "connection closed",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0.0, description="An idle kept-alive connection is closed after this long"
    )
    max_docs_per_request: int = Field(1000, ge=1)
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_query_chars: int = Field(32768, ge=1)
    max_instruction_chars: int = Field(
        4000, ge=1, description="Characters of a request's instruction before 400"
    )
    max_queue_docs: int = Field(8192, ge=1, description="Queued documents before 429")
    batch_wait_ms: float = Field(2.0, ge=0.0, description="Wait to coalesce requests")
    request_timeout_s: float = Field(120.0, gt=0.0)
    max_call_tokens: int = Field(
        131072,
        ge=1,
        description="Estimated prompt tokens one backend call takes; larger requests are "
        "scored in pieces of this size, sharing the backend fairly with the other requests",
    )
    max_queue_tokens: int = Field(
        4_194_304, ge=1, description="Estimated prompt tokens queued before 429"
    )
    max_queue_chars: int = Field(
        32 * 1024 * 1024, ge=1, description="Characters of text held by queued requests before 429"
    )


class ScaleSettings(BaseModel):
    """``services.rerank.scale``: run the service as a Ray Serve application, one backend
    per replica, over every GPU of a host or of a Ray cluster (docs/scaling.md).

    Without this section the service is one process and needs no Ray.
    """

    model_config = ConfigDict(extra="forbid")

    engine: Literal["ray"] = Field("ray", description="The scale-out engine: Ray Serve")
    address: str | None = Field(
        None,
        description="The Ray cluster to join: 'auto' (the cluster started on this host "
        "with `ray start`), 'HOST:PORT' or 'ray://HOST:10001'; unset starts a local Ray "
        "instance that ends with the service",
    )
    replicas: int | Literal["auto"] | None = Field(
        None,
        description="Backend replicas: N, 'auto' (Ray Serve autoscaling between "
        "min_replicas and max_replicas on load), or unset: one per gpus_per_replica GPUs "
        "of the cluster (one replica on a cluster without GPUs)",
    )
    gpus_per_replica: float | None = Field(
        None,
        ge=0.0,
        description="GPUs each replica reserves (a fraction packs several on one GPU; set "
        "it to tensor_parallel_size x data_parallel_size for a vLLM engine over several "
        "GPUs); unset: 1 on a cluster with GPUs, else 0",
    )
    cpus_per_replica: float | None = Field(
        None,
        ge=0.0,
        description="CPUs each replica reserves; Ray gives the replica as many threads "
        "(tokenisation, batch packing and CPU inference use them). Unset: the cluster's CPUs "
        "shared out by GPU (gpus_per_replica x CPUs per GPU), or by replica without GPUs",
    )
    min_replicas: int = Field(1, ge=0, description="replicas: auto: the fewest replicas")
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="replicas: auto: the most replicas; unset: as many as the cluster's "
        "GPUs hold (gpus_per_replica each)",
    )
    target_ongoing_requests: float = Field(
        16.0,
        gt=0.0,
        description="replicas: auto: the requests in flight per replica the autoscaler "
        "aims at (each replica batches its requests together)",
    )
    upscale_delay_s: float = Field(
        30.0, ge=0.0, description="replicas: auto: how long load stays high before adding one"
    )
    downscale_delay_s: float = Field(
        600.0, ge=0.0, description="replicas: auto: how long load stays low before removing one"
    )
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="Requests one replica holds at once (its scheduler queues and batches "
        "them); more wait in Ray's router",
    )
    ingress_replicas: int = Field(
        1, ge=1, description="Replicas of the HTTP front (validation, auth, routing; no model)"
    )
    retries: int = Field(
        2,
        ge=0,
        description="A request whose replica died under it is sent to another replica up "
        "to this many times, then answered 503 with Retry-After",
    )
    replica_start_timeout_s: float = Field(
        900.0, gt=0.0, description="How long the service waits for its replicas at start"
    )
    health_check_period_s: float = Field(
        2.0, gt=0.0, description="How often Ray checks each replica's backend"
    )
    app_name: str = Field(
        "reranker",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The Ray Serve application's name (one per service on a cluster)",
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> ScaleSettings:
        if isinstance(self.replicas, int) and self.replicas < 1:
            raise ValueError("replicas must be at least 1 (or 'auto')")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self


class RerankSection(BaseModel):
    """``services.rerank``."""

    model_config = ConfigDict(extra="forbid")

    backend: str = DEFAULT_BACKEND
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    scale: ScaleSettings | None = Field(
        None, description="Serve on Ray Serve replicas (docs/scaling.md); unset: one process"
    )


class ServicesSection(BaseModel):
    """``services``."""

    model_config = ConfigDict(extra="forbid")

    rerank: RerankSection = Field(default_factory=lambda: RerankSection())


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(extra="forbid")

    services: ServicesSection = Field(default_factory=lambda: ServicesSection())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file and RERANK_* overrides are merged by load_settings into init kwargs.
        return (init_settings,)

    @property
    def rerank(self) -> RerankSection:
        """Shortcut to ``services.rerank``."""
        return self.services.rerank

    @property
    def backend(self) -> str:
        """The selected backend's name."""
        return self.services.rerank.backend

    def raw_backend_options(self, name: str | None = None) -> dict[str, Any]:
        """The options mapping of ``name`` (default: the selected backend), unvalidated."""
        return dict(self.services.rerank.backends.get(name or self.backend) or {})


def _format_validation_error(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{where}.{loc}" if loc else where
        got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {path}: {msg}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _env_value(raw: str) -> Any:
    """Env strings: JSON objects/lists are parsed, everything else pydantic coerces."""
    text = raw.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cannot parse JSON value {raw!r}: {exc}") from exc
    return text


def backend_env_overrides(
    options_model: type[BackendOptions],
    prefix: str,
    env: Mapping[str, str],
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Options taken from ``<prefix><OPTION>`` variables (and ``aliases``: var -> option)."""
    found: dict[str, Any] = {}
    for option in options_model.model_fields:
        var = f"{prefix}{option.upper()}"
        if env.get(var, "").strip():
            found[option] = _env_value(env[var])
    for var, option in (aliases or {}).items():
        if env.get(var, "").strip():
            found[option] = _env_value(env[var])
    if env.get("RERANK_MODEL", "").strip():
        found["model_name"] = env["RERANK_MODEL"].strip()
    return found


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read the config file (``RERANK_CONFIG`` or ``config/config.yaml``) and RERANK_* env.

    Raises :class:`ConfigError` naming each bad key. Backend options are validated by
    :func:`resolve_backend_options`, which knows the selected backend's options model.
    """
    env = os.environ if env is None else env
    path_text = config_path or env.get("RERANK_CONFIG")
    path = Path(path_text) if path_text else DEFAULT_CONFIG_PATH
    if path_text and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (RERANK_CONFIG / --config)")
    data = _read_yaml(path) if path.is_file() else {}
    if data.get("services") is None:
        data["services"] = {}
    services = data["services"]
    if not isinstance(services, dict):
        raise ConfigError("services must be a mapping")
    if services.get("rerank") is None:
        services["rerank"] = {}
    section = services["rerank"]
    if not isinstance(section, dict):
        raise ConfigError("services.rerank must be a mapping")
    if env.get("RERANK_BACKEND", "").strip():
        section["backend"] = env["RERANK_BACKEND"].strip()
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(path))) from exc


def resolve_backend_options(
    settings: Settings, name: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[type[Any], BackendOptions]:
    """The backend class and its validated options (file + env), or a clear error."""
    from reranker.core.registry import load_backend_class

    name = name or settings.backend
    cls = load_backend_class(name)
    env = os.environ if env is None else env
    raw = settings.raw_backend_options(name)
    raw.update(
        backend_env_overrides(cls.Options, cls.env_prefix, env, getattr(cls, "env_aliases", None))
    )
    try:
        return cls, cls.Options.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            _format_validation_error(exc, f"services.rerank.backends.{name}")
        ) from exc
