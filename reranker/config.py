"""Settings: ``config/config.yaml`` plus ``RERANK_*`` environment overrides, validated.

File layout::

    services:
      rerank:
        backend: qwen3_transformers
        backends:
          qwen3_transformers: {model_name: ..., ...}
        server: {host: ..., port: ...}

Environment (pydantic-settings sources, each over the file): ``RERANK_CONFIG`` (file
path), ``RERANK_BACKEND`` (:class:`BackendChoiceSource`), and for the selected backend
(:class:`BackendEnvSource`) one variable per option, ``<prefix><OPTION>`` where the prefix
is the backend's ``env_prefix`` (``RERANK_VLLM_INFER_BATCH_SIZE``), its ``env_aliases``,
and ``RERANK_MODEL`` (its model_name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from reranker.core.errors import ConfigError
from reranker.core.options import BackendOptions

DEFAULT_CONFIG_PATH = Path("config/config.yaml")
DEFAULT_BACKEND = "qwen3_transformers"
CONFIG_VARIABLE = "RERANK_CONFIG"
BACKEND_VARIABLE = "RERANK_BACKEND"
MODEL_VARIABLE = "RERANK_MODEL"


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
    batch_wait_ms: float = Field(
        0.0, ge=0.0, description="How long an idle scheduler waits to coalesce requests"
    )
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
    overlap_calls: bool = Field(
        True,
        description="Start the next backend call while the device runs the current one "
        "(backends that run asynchronously: the transformers backends on a GPU)",
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
    ingress: Literal["process", "ray"] = Field(
        "process",
        description="Where HTTP is served: 'process': by the `reranker serve` process, each "
        "request one Ray call to a replica; 'ray': by Ray Serve's proxy on every node, "
        "through ingress_replicas HTTP fronts (two Ray calls a request)",
    )
    ingress_replicas: int = Field(
        1,
        ge=1,
        description="ingress: ray: replicas of the HTTP front (validation, auth, routing; "
        "no model)",
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


# The config file and the environment load_settings is reading, for Settings' sources;
# unset (Settings(...) called directly), only the values passed in count.
_LOADING: ContextVar[tuple[Path, Mapping[str, str]] | None] = ContextVar("_LOADING", default=None)


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
        """Sources, highest first: values passed in; then, in :func:`load_settings`,
        ``RERANK_BACKEND`` and the config file. No other variable is read here: backend
        options come from :func:`resolve_backend_options`."""
        loading = _LOADING.get()
        if loading is None:
            return (init_settings,)
        path, env = loading
        return (
            init_settings,
            BackendChoiceSource(settings_cls, env),
            ConfigFileSource(settings_cls, path),
        )

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


def _format_validation_error(
    exc: ValidationError, where: str, origins: Mapping[str, str] | None = None
) -> str:
    """One line per error: the key's path, the variable it came from (``origins``:
    top-level key -> variable), the message and the value."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{where}.{loc}" if loc else where
        variable = (origins or {}).get(str(err["loc"][0])) if err["loc"] else None
        origin = f" (from {variable})" if variable else ""
        got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {path}{origin}: {msg}{got}")
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


def _with_sections(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``services`` and ``services.rerank`` as mappings (empty if unset)."""
    if data.get("services") is None:
        data["services"] = {}
    services = data["services"]
    if not isinstance(services, dict):
        raise ConfigError("services must be a mapping")
    if services.get("rerank") is None:
        services["rerank"] = {}
    if not isinstance(services["rerank"], dict):
        raise ConfigError("services.rerank must be a mapping")
    return data


def _env_text(env: Mapping[str, str], variable: str) -> str:
    """The variable's value without surrounding blanks ("" when unset)."""
    return (env.get(variable) or "").strip()


def _env_value(variable: str, text: str) -> Any:
    """A variable's (stripped) value: JSON when it starts with ``{`` or ``[``, else the
    string itself, which the options model converts (``7``, ``true``, ``bfloat16``)."""
    if text[:1] not in ("{", "["):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{variable}: cannot parse JSON value {text!r}: {exc}") from exc


class ConfigFileSource(PydanticBaseSettingsSource):
    """The config file's settings; a file that does not exist reads as empty."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """One top-level key of the file: its value, its name, not complex."""
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """The file's contents, ``services.rerank`` checked to be a mapping."""
        return _with_sections(_read_yaml(self.path) if self.path.is_file() else {})


class BackendChoiceSource(PydanticBaseSettingsSource):
    """``RERANK_BACKEND``: the selected backend (``services.rerank.backend``)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The ``services`` tree holding the backend's name (None when unset)."""
        return self().get(field_name), field_name, True

    def __call__(self) -> dict[str, Any]:
        """``{"services": {"rerank": {"backend": NAME}}}``, or nothing when unset."""
        name = _env_text(self.env, BACKEND_VARIABLE)
        return {"services": {"rerank": {"backend": name}}} if name else {}


class BackendEnvSource(EnvSettingsSource):
    """One backend's options from the environment, highest first: ``RERANK_MODEL``
    (``model_name``), the backend's ``env_aliases`` (variable -> option), and
    ``<env_prefix><OPTION>`` for each option (its name in upper case, as written).

    Values are stripped and blank ones ignored; see :func:`_env_value` for how each is
    read. ``origins`` maps each option found to the variable it came from.
    """

    def __init__(
        self,
        options_model: type[BaseModel],
        env_prefix: str,
        env: Mapping[str, str],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        # The source reads only the model's fields and config: any pydantic model will do.
        settings_cls = cast("type[BaseSettings]", options_model)
        super().__init__(settings_cls, case_sensitive=False, env_prefix=env_prefix)
        self.prefix = env_prefix
        self.env = env
        self.aliases = dict(aliases or {})
        self.origins: dict[str, str] = {}
        # Names are matched in lower case: keep only those written in upper case.
        self.env_vars = {name.lower(): value for name, value in env.items() if name.isupper()}

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        """The option's value from ``<env_prefix><OPTION>`` (None when unset or blank)."""
        return self._take(f"{self.prefix}{field_name.upper()}", field_name, value)

    def __call__(self) -> dict[str, Any]:
        """The options set in the environment."""
        values = super().__call__()
        for variable, option in self.aliases.items():
            value = self._take(variable, option, self.env.get(variable))
            if value is not None:
                values[option] = value
        model = _env_text(self.env, MODEL_VARIABLE)
        if model:  # a path or hub id, never JSON
            values["model_name"] = model
            self.origins["model_name"] = MODEL_VARIABLE
        return values

    def _take(self, variable: str, option: str, raw: str | None) -> Any:
        """``raw`` read as the option's value (None when unset or blank)."""
        text = (raw or "").strip()
        if not text:
            return None
        value = _env_value(variable, text)
        self.origins[option] = variable
        return value


def _config_file_path(
    config_path: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> tuple[Path, bool]:
    """The config file to read: ``config_path``, else ``RERANK_CONFIG``, else
    ``config/config.yaml``; and whether it was named (a named file must exist)."""
    named = config_path or env.get(CONFIG_VARIABLE)
    return (Path(named), True) if named else (DEFAULT_CONFIG_PATH, False)


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read the config file (``config_path``, ``RERANK_CONFIG`` or ``config/config.yaml``)
    and ``RERANK_BACKEND``, which overrides the file's ``services.rerank.backend``.

    Raises :class:`ConfigError` naming each bad key. Backend options are validated by
    :func:`resolve_backend_options`, which knows the selected backend's options model.
    """
    env = os.environ if env is None else env
    path, named = _config_file_path(config_path, env)
    if named and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (RERANK_CONFIG / --config)")
    token = _LOADING.set((path, env))
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(path))) from exc
    finally:
        _LOADING.reset(token)


def resolve_backend_options(
    settings: Settings, name: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[type[Any], BackendOptions]:
    """The backend class and its validated options, or a clear error.

    Each option comes from the environment (:class:`BackendEnvSource`) if set there, else
    from the file's ``services.rerank.backends.<name>``; a dict option is replaced whole.
    """
    from reranker.core.registry import load_backend_class

    name = name or settings.backend
    cls = load_backend_class(name)
    env = os.environ if env is None else env
    source = BackendEnvSource(cls.Options, cls.env_prefix, env, cls.env_aliases)
    raw = {**settings.raw_backend_options(name), **source()}
    try:
        return cls, cls.Options.model_validate(raw)
    except ValidationError as exc:
        where = f"services.rerank.backends.{name}"
        raise ConfigError(_format_validation_error(exc, where, source.origins)) from exc
