"""``reranker serve`` with a ``scale`` section: deploy the service on Ray Serve, wait for
SIGTERM / SIGINT, drain, stop.

Exit status as the single-process service: 0 after a drained stop, 2 when Ray cannot be
reached or the replicas cannot start.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from reranker.config import ScaleSettings, Settings
from reranker.core.options import BackendOptions
from reranker.scale.pool import BACKEND_DEPLOYMENT, KV_NAMESPACE, RayPool, drain_key

logger = logging.getLogger("reranker.scale")

HTTP_DEPLOYMENT = "http"
EXIT_OK = 0
EXIT_START_FAILED = 2


def replica_count(scale: ScaleSettings, cluster: dict[str, float]) -> tuple[int, float]:
    """``(replicas, gpus_per_replica)`` for a fixed-size deployment on a cluster with
    ``cluster`` resources (``ray.cluster_resources()``): unset values fill every GPU."""
    gpus = float(cluster.get("GPU", 0.0))
    per_replica = scale.gpus_per_replica
    if per_replica is None:
        per_replica = 1.0 if gpus >= 1 else 0.0
    if isinstance(scale.replicas, int):
        return scale.replicas, per_replica
    if per_replica > 0:
        return max(1, math.floor(gpus / per_replica + 1e-9)), per_replica
    return 1, per_replica


def cpus_per_replica(scale: ScaleSettings, cluster: dict[str, float]) -> float:
    """The CPUs a replica reserves: as set, else the cluster's CPUs shared out by GPU
    (a replica of one GPU on a host of 32 CPUs and 2 GPUs gets 16), or by replica on a
    cluster without GPUs. Ray sets a replica's thread count (``OMP_NUM_THREADS``) to its
    CPUs: one CPU would leave tokenisation and batch packing a single thread."""
    if scale.cpus_per_replica is not None:
        return scale.cpus_per_replica
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    count, per_replica = replica_count(scale, cluster)
    if per_replica > 0 and gpus > 0:
        share = cpus / gpus * per_replica
    else:
        most = scale.max_replicas or scale.min_replicas if scale.replicas == "auto" else count
        share = cpus / max(1, most)
    return max(1.0, math.floor(share)) if share >= 1 else share


def deployment_options(scale: ScaleSettings, server_shutdown_s: float, cluster: dict) -> dict:
    """The Ray Serve options of the backend deployment (replicas or autoscaling,
    resources, health checks, graceful shutdown)."""
    count, per_replica = replica_count(scale, cluster)
    options: dict[str, Any] = {
        "name": BACKEND_DEPLOYMENT,
        "ray_actor_options": {
            "num_gpus": per_replica,
            "num_cpus": cpus_per_replica(scale, cluster),
        },
        "max_ongoing_requests": scale.max_ongoing_requests,
        "health_check_period_s": scale.health_check_period_s,
        "health_check_timeout_s": max(10.0, 5 * scale.health_check_period_s),
        "graceful_shutdown_timeout_s": server_shutdown_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        # A replica whose backend cannot load (a model missing on a host, ...) fails the
        # start after a few tries, with its error, instead of being retried for minutes.
        "max_constructor_retry_count": 3,
    }
    if scale.replicas == "auto":
        most = scale.max_replicas or max(count, scale.min_replicas, 1)
        options["autoscaling_config"] = {
            "min_replicas": scale.min_replicas,
            "initial_replicas": max(scale.min_replicas, 1),
            "max_replicas": most,
            "target_ongoing_requests": scale.target_ongoing_requests,
            "upscale_delay_s": scale.upscale_delay_s,
            "downscale_delay_s": scale.downscale_delay_s,
        }
    else:
        options["num_replicas"] = count
    return options


def build_application(
    settings: Settings,
    backend_name: str,
    options: BackendOptions,
    cluster: dict,
    model_label: str | None = None,
) -> Any:
    """The Ray Serve application: the backend replicas; with ``ingress: ray``, the HTTP
    front bound to them, naming the model ``model_label`` (default: its ``model_name``)."""
    from ray import serve

    from reranker.scale.replica import BackendReplica, HTTPFront

    section = settings.rerank
    scale = section.scale
    assert scale is not None
    server = section.server.model_dump(mode="json")
    deployment: Any = serve.deployment
    backend = deployment(BackendReplica).options(
        **deployment_options(scale, section.server.shutdown_timeout_s, cluster)
    )
    # Only what was set: a replica fills in defaults as one process does (a backend may
    # choose its own for what is left unset).
    replicas = backend.bind(
        backend_name, options.model_dump(mode="json", exclude_unset=True), server
    )
    if scale.ingress == "process":
        return replicas
    front = deployment(serve.ingress()(HTTPFront)).options(
        name=HTTP_DEPLOYMENT,
        num_replicas=scale.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(1024, scale.max_ongoing_requests * 4),
        graceful_shutdown_timeout_s=section.server.shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
    )
    return front.bind(
        replicas,
        backend_name,
        model_label or options.model_name,
        server,
        scale.model_dump(mode="json"),
    )


def serve_on_ray(
    settings: Settings,
    backend_name: str,
    options: BackendOptions,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """Deploy, serve until SIGTERM / SIGINT, drain; returns the exit status."""
    # Ray holds back log lines that differ only in numbers (one per replica): show each.
    # Read when Ray is imported.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        print(
            f"error: services.rerank.scale needs Ray Serve, which this venv lacks ({exc}); "
            f"install it with: scripts/setup_reranker_venv.sh {backend_name} --with ray",
            file=sys.stderr,
        )
        return EXIT_START_FAILED

    scale = settings.rerank.scale
    assert scale is not None
    server = settings.rerank.server
    unreachable = _unreachable(scale.address)
    if unreachable is not None:
        print(f"error: cannot reach Ray at {scale.address}: {unreachable}", file=sys.stderr)
        return EXIT_START_FAILED
    # The replicas get a local model folder as an absolute path; answers name the model
    # as configured, as the single-process service does.
    model_label = options.model_name
    options = _with_absolute_model_path(options)
    if scale.ingress == "process":
        taken = _port_taken(host or server.host, server.port if port is None else port)
        if taken is not None:  # found now, not after every replica has loaded
            print(f"error: {taken}", file=sys.stderr)
            return EXIT_START_FAILED
    # A signal handler only appends (no lock: a second signal may arrive inside the first
    # handler, e.g. Ctrl-C in a terminal plus the one start_reranker.sh forwards).
    caught: list[int] = []
    stop = _Stop(caught)

    def on_signal(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # Unset: RAY_ADDRESS if set (Ray's own convention), else a new local instance, never
    # a cluster that happens to run on this host.
    address = scale.address or os.environ.get("RAY_ADDRESS") or "local"
    started_here = address == "local"
    try:
        try:
            context = ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        except Exception as exc:
            where = "a new local instance" if started_here else address
            hint = "" if started_here else " (services.rerank.scale.address)"
            print(f"error: cannot start or reach Ray ({where}){hint}: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
        # ray.init installs its own SIGTERM handler (exit at once): drain instead.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        gcs = getattr(context, "address_info", {}).get
        cluster = ray.cluster_resources()
        application = build_application(settings, backend_name, options, cluster, model_label)
        count, per_replica = replica_count(scale, cluster)
        if per_replica > 0 and not cluster.get("GPU"):
            print(
                f"error: each replica asks for {per_replica:g} GPU (gpus_per_replica) and the "
                "Ray cluster has none: set gpus_per_replica: 0 and replicas: N to run the "
                "replicas on CPUs, or add a host with GPUs",
                file=sys.stderr,
            )
            return EXIT_START_FAILED
        print(
            f"[scale] Ray at {gcs('gcs_address')}: "
            f"{cluster.get('GPU', 0):g} GPU(s), {cluster.get('CPU', 0):g} CPU(s); "
            f"replicas: {scale.replicas if scale.replicas == 'auto' else count} "
            f"({per_replica:g} GPU each); HTTP on {host or server.host}:"
            f"{server.port if port is None else port}",
            flush=True,
        )
        _set_drain_flag(scale, False)  # left by a service of this name that did not stop
        if scale.ingress == "ray":
            serve.start(
                http_options={
                    "host": host or server.host,
                    "port": server.port if port is None else port,
                    "keep_alive_timeout_s": math.ceil(server.keep_alive_timeout_s),
                }
            )
        else:
            serve.start(proxy_location="Disabled")
        failure: list[BaseException] = []
        deployed = threading.Thread(
            target=_deploy, args=(application, scale, failure), name="deploy", daemon=True
        )
        deployed.start()
        deadline = time.monotonic() + scale.replica_start_timeout_s
        while deployed.is_alive() and not stop.is_set():
            deployed.join(0.2)
            if time.monotonic() > deadline:
                failure.append(
                    TimeoutError(
                        f"replicas not running after {scale.replica_start_timeout_s:g} s: "
                        f"{_backend_status(scale)}"
                    )
                )
                break
        if failure:
            why = str(failure[0])
            if not isinstance(failure[0], TimeoutError):  # the replicas' own error, last line
                lines = [x for x in _backend_status(scale).splitlines() if x.strip()]
                why = f"{why} {lines[-1].strip() if lines else ''}".strip()
            print(f"error: the service could not start on Ray: {why}", file=sys.stderr)
            return EXIT_START_FAILED
        if stop.is_set():
            return EXIT_OK
        print(
            f"[scale] application '{scale.app_name}' running: {_running_replicas(scale)} "
            "backend replica(s)",
            flush=True,
        )
        if scale.ingress == "process":
            # SIGTERM / SIGINT: new requests 503 until those in flight are answered.
            if not _serve_http(settings, backend_name, model_label, host, port, stop.is_set):
                print("error: the HTTP server could not start (above)", file=sys.stderr)
                return EXIT_START_FAILED
            return EXIT_OK
        while not stop.wait(0.5):
            pass
        print(
            "[scale] stopping: draining in-flight requests "
            f"({server.shutdown_timeout_s:g} s at most)",
            flush=True,
        )
        _drain(scale, server.shutdown_timeout_s)
        return EXIT_OK
    finally:
        _stop(scale, started_here)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_http(
    settings: Settings,
    backend_name: str,
    model: str,
    host: str | None,
    port: int | None,
    stopped: Any,
) -> bool:
    """The single-process service's HTTP server and app in this process, scoring through
    the backend replicas (one Ray call a request); returns after a drained stop (True),
    or False when the server could not start. ``stopped()``: a stop signal came before
    the server took the signals over."""
    from ray import serve

    from reranker.service.app import create_app
    from reranker.service.server import serve_http

    scale = settings.rerank.scale
    assert scale is not None
    handle = serve.get_deployment_handle(BACKEND_DEPLOYMENT, app_name=scale.app_name)
    server = settings.rerank.server
    pool = RayPool(handle, scale)
    app = create_app(None, server, backend_name, model, pool=pool)
    return serve_http(app, server, host, port, _Drain(pool, app.state.service), stopped)


class _Drain:
    """A stop of the HTTP server in this process: the pool refuses new requests, and
    every response from then on closes its connection (``ServiceState.stopping``)."""

    def __init__(self, pool: RayPool, state: Any) -> None:
        self.pool = pool
        self.state = state

    def begin(self) -> None:
        self.state.stopping = True
        self.pool.begin()

    def idle(self) -> bool:
        return self.pool.idle()


class _Stop:
    """Whether a stop signal arrived: read from the signal list, with no lock taken."""

    def __init__(self, caught: list[int]) -> None:
        self.caught = caught

    def is_set(self) -> bool:
        return bool(self.caught)

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return self.is_set()


def _unreachable(address: str | None) -> str | None:
    """Why a ``HOST:PORT`` or ``ray://HOST:PORT`` address cannot be reached now (one
    TCP connection, 5 s at most), else None; Ray itself would retry for many minutes."""
    if not address or address in ("auto", "local"):
        return None
    where = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return None  # Ray parses it and says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc}); is `ray start --head` running there?"
    return None


def _port_taken(host: str, port: int) -> str | None:
    """Why the HTTP server could not listen on ``host:port`` (taken, not an address of
    this host), else None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = exc.strerror or exc
            return f"cannot listen on {host}:{port} ({why}); free the port or set server.port"
    return None


def _with_absolute_model_path(options: BackendOptions) -> BackendOptions:
    """A local model folder named relative to this directory, as an absolute path: the
    replicas run in other directories (on other hosts, where ``ray start`` ran)."""
    local = Path(options.model_name).expanduser()
    if not local.is_absolute() and local.exists():
        return options.model_copy(update={"model_name": str(local.resolve())})
    return options


def _backend_status(scale: ScaleSettings) -> str:
    """Ray Serve's word on the backend replicas (why they are not running)."""
    from ray import serve

    try:
        app = serve.status().applications.get(scale.app_name)
        deployment = app.deployments.get(BACKEND_DEPLOYMENT) if app else None
    except Exception as exc:
        return f"(Ray Serve's status is unavailable: {exc})"
    if deployment is None:
        return "the backend deployment does not exist yet"
    return deployment.message or str(deployment.status)


def _running_replicas(scale: ScaleSettings) -> int:
    """How many backend replicas Ray Serve reports running (0 if it cannot say)."""
    from ray import serve

    try:
        app = serve.status().applications.get(scale.app_name)
        deployment = app.deployments.get(BACKEND_DEPLOYMENT) if app else None
        states = deployment.replica_states if deployment else {}
    except Exception:  # the controller is busy: the count is only for the log
        return 0
    return sum(n for k, n in states.items() if str(getattr(k, "value", k)).upper() == "RUNNING")


def _deploy(application: Any, scale: ScaleSettings, failure: list[BaseException]) -> None:
    """``serve.run`` (it returns once every replica runs); its error goes to ``failure``."""
    from ray import serve

    try:
        # The HTTP app logs one access line per request itself (as the single-process
        # service does); Ray's per-call lines would double them.
        serve.run(
            application,
            name=scale.app_name,
            route_prefix="/" if scale.ingress == "ray" else None,
            logging_config={"enable_access_log": False},
        )
    except BaseException as exc:
        failure.append(exc)


def _set_drain_flag(scale: ScaleSettings, on: bool) -> None:
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    if on:
        _internal_kv_put(drain_key(scale.app_name), b"1", namespace=KV_NAMESPACE)
    else:
        _internal_kv_del(drain_key(scale.app_name), namespace=KV_NAMESPACE)


def _drain(scale: ScaleSettings, timeout_s: float) -> None:
    """Have the HTTP fronts refuse new requests (503 + Retry-After, ``/ready`` 503) and
    wait, at most ``timeout_s``, until none has a request in flight."""
    from ray import serve

    _set_drain_flag(scale, True)
    front = serve.get_deployment_handle(HTTP_DEPLOYMENT, app_name=scale.app_name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            # Each call reaches one front: ask enough times to hear from every one.
            states = [
                front.drain_state.remote().result(timeout_s=5)
                for _ in range(2 * scale.ingress_replicas)
            ]
        except Exception as exc:
            logger.warning("waiting for in-flight requests: %s", exc)
            return
        if all(draining and not busy for draining, busy in states):
            return
    logger.warning("requests still in flight after %g s: stopping anyway", timeout_s)


def _stop(scale: ScaleSettings, started_here: bool) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if started_here:
            serve.shutdown()
        else:
            serve.delete(scale.app_name)  # other applications on the cluster stay up
        _set_drain_flag(scale, False)
    except Exception as exc:
        logger.warning("stopping the application: %s", exc)
    ray.shutdown()
