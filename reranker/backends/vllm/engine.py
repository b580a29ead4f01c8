"""What every vLLM backend shares, whatever its model: engine arguments, attention
choice, data-parallel engines, health, engine shutdown, and :class:`VLLMBackendBase`, the
model-neutral base class of the vLLM backends."""

from __future__ import annotations

import gc
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from reranker.backends.hf_loading import check_hub_model, load_or_explain
from reranker.backends.runtime import resolve_device, resolve_dtype
from reranker.core.errors import BackendDead, ConfigError
from reranker.core.model_source import check_model_source
from reranker.core.options import VLLMOptions
from reranker.core.protocol import RerankBackend

_T = TypeVar("_T")

logger = logging.getLogger(__name__)


def has_field(params_class: Any, name: str) -> bool:
    """Whether this vLLM's ``SamplingParams`` / ``PoolingParams`` has field ``name``
    (msgspec structs in some releases, dataclasses in others)."""
    return name in getattr(params_class, "__struct_fields__", ()) or name in getattr(
        params_class, "__dataclass_fields__", {}
    )


def raw_logit_switch(pooling_params_class: Any) -> str | None:
    """The ``PoolingParams`` field that turns a classifier's activation off (its raw
    logit comes back): ``use_activation`` or, in older vLLM, ``activation``; None where
    this vLLM has neither (its sigmoid is then inverted with :func:`logit`)."""
    switches = ("use_activation", "activation")
    return next((f for f in switches if has_field(pooling_params_class, f)), None)


def logit(p: float) -> float:
    """The logit of a probability (the inverse of the sigmoid), finite at 0 and 1."""
    p = min(max(p, 1e-38), 1.0 - 1e-16)
    return math.log(p) - math.log1p(-p)


def cuda_capability() -> tuple[int, int] | None:
    """The first CUDA device's compute capability, or None without CUDA."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return int(major), int(minor)
    except Exception:  # no torch CUDA runtime: vLLM's CPU build
        return None
    return None


def attention_backend(options: VLLMOptions) -> str | None:
    """The attention backend to force, or None to let vLLM choose.

    An explicit ``vllm_attention_backend`` wins. Otherwise, on GPUs older than sm 8.0
    (T4, V100) TRITON_ATTN is chosen, since FlashAttention-2 needs sm >= 80, unless
    ``auto_triton_attn_on_sm_lt_8`` is off.
    """
    choice = options.vllm_attention_backend.strip().upper()
    if choice and choice != "AUTO":
        return choice
    capability = cuda_capability()
    if capability and capability[0] < 8 and options.auto_triton_attn_on_sm_lt_8:
        logger.info("compute capability %d.%d < 8.0: attention backend TRITON_ATTN", *capability)
        return "TRITON_ATTN"
    return None


def engine_kwargs(options: VLLMOptions, runner: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for these options (of each engine).

    ``data_parallel_size`` is not among them: ``vllm.LLM`` refuses it (a ValueError
    pointing to its one-process-per-rank example, vLLM 0.21 to 0.32 at least), so each
    data-parallel rank is an engine of its own (:func:`engine_gpus`).
    """
    kwargs: dict[str, Any] = {
        "model": options.model_name,
        "tokenizer": options.model_name,
        "runner": runner if options.vllm_runner == "auto" else options.vllm_runner,
        "max_model_len": options.max_model_len,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enable_prefix_caching": options.enable_prefix_caching,
        "enforce_eager": options.enforce_eager,
        "dtype": resolve_dtype(options.dtype, resolve_device("auto")),
        "seed": options.seed,
        "use_tqdm_on_load": False,
        **extra,
    }
    if options.vllm_convert != "auto":
        kwargs["convert"] = options.vllm_convert
    if options.hf_overrides:
        kwargs["hf_overrides"] = {**options.hf_overrides, **kwargs.get("hf_overrides", {})}
    if options.max_num_seqs:
        kwargs["max_num_seqs"] = options.max_num_seqs
    if options.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = options.max_num_batched_tokens
    backend = attention_backend(options)
    if backend:
        kwargs["attention_config"] = {"backend": backend}
    if options.quantization != "none":
        kwargs["quantization"] = options.quantization
    return kwargs


# fp8 tensor cores (W8A8): Ada (8.9), Hopper (9.0) and newer.
FP8_MIN_CAPABILITY = (8, 9)


def check_quantization(options: VLLMOptions) -> None:
    """Refuse ``quantization: fp8`` where vLLM cannot run it, before any engine starts
    (:func:`check_fp8_on`, with this host's first CUDA device)."""
    if options.quantization == "fp8":
        check_fp8_on(cuda_capability())


def check_fp8_on(capability: tuple[int, int] | None) -> None:
    """vLLM's fp8 on a GPU of this compute capability (None: no CUDA, vLLM's CPU build):
    a :class:`ConfigError` without CUDA (the CPU build loads no fp8 weights: its engine
    dies at load with an internal error); below 8.9 a warning, as vLLM then keeps fp8
    weights but computes in 16 bits (its weight-only Marlin kernel), not W8A8."""
    if capability is None:
        raise ConfigError(
            "quantization: fp8 runs vLLM's fp8 kernels, which need a CUDA GPU (compute "
            "capability 8.9 or newer: Ada, Hopper); vLLM's CPU build cannot load fp8 "
            "weights. Set quantization: none here, or use qwen3_transformers, whose fp8 "
            "path also runs on the CPU"
        )
    if capability < FP8_MIN_CAPABILITY:
        logger.warning(
            "quantization: fp8 on a GPU of compute capability %d.%d (< 8.9, no fp8 tensor "
            "cores): vLLM keeps fp8 weights but computes in 16 bits (weight-only)",
            *capability,
        )


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` names them
    (indices or UUIDs); empty without CUDA (vLLM's CPU build)."""
    if cuda_capability() is None:
        return []
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def engine_gpus(options: VLLMOptions, visible: list[str] | None = None) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each engine: ``[None]`` for one engine (vLLM
    picks its GPUs, as always); for ``data_parallel_size`` N, N disjoint sets of
    ``tensor_parallel_size`` GPUs, in order, from ``visible`` (default:
    :func:`visible_gpus`). Too few GPUs, or none, is a :class:`ConfigError`.
    """
    dp, tp = options.data_parallel_size, options.tensor_parallel_size
    if dp == 1:
        return [None]
    gpus = visible_gpus() if visible is None else visible
    need = dp * tp
    if not gpus:
        raise ConfigError(
            f"data_parallel_size {dp}: {dp} engines need {need} CUDA GPUs "
            f"(data_parallel_size x tensor_parallel_size); this host has none (vLLM's CPU "
            "build runs one engine). Set data_parallel_size 1, or run several copies of the "
            "service with Ray Serve replicas (services.rerank.scale)"
        )
    if len(gpus) < need:
        raise ConfigError(
            f"data_parallel_size {dp} x tensor_parallel_size {tp} needs {need} CUDA GPUs; "
            f"{len(gpus)} visible ({','.join(gpus)}). Lower data_parallel_size, or spread "
            "the service over hosts with Ray Serve replicas (services.rerank.scale)"
        )
    return [",".join(gpus[i * tp : (i + 1) * tp]) for i in range(dp)]


_PINNING = threading.Lock()


@contextmanager
def pinned_gpus(devices: str | None) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES=devices`` while an engine starts: the engine-core process
    (and its tensor-parallel workers) inherit it and see only those GPUs, as vLLM's own
    data-parallel ranks do (``set_device_control_env_var``). ``None``: unchanged."""
    if devices is None:
        yield
        return
    with _PINNING:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
        try:
            yield
        finally:
            if before is None:
                del os.environ["CUDA_VISIBLE_DEVICES"]
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


def quiet_engine_logs() -> None:
    """vLLM and torch's C++ side log at ERROR unless the user set their own level.

    Before vLLM is imported (it reads the variables then, in this process and in its
    engine processes): a start otherwise prints dozens of notes meant for vLLM's
    developers. ``VLLM_LOGGING_LEVEL=INFO`` brings them back.
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # Its engine processes import a module that warns of a deprecated torch name.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:vllm.triton_utils.dispatcher")
    # vLLM applies its level when it configures logging, after its imports have logged.
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())


def start_engine(options: VLLMOptions, kwargs: dict[str, Any]) -> Any:
    """Build ``vllm.LLM``; a missing model becomes one clear error."""
    from vllm import LLM

    logger.info("starting vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "model"})
    llm = load_or_explain(options.model_name, "vLLM engine", lambda: LLM(**kwargs))
    watch_engine(llm)
    return llm


def start_engines(
    options: VLLMOptions, kwargs: dict[str, Any], gpus: list[str | None] | None = None
) -> list[Any]:
    """One engine per data-parallel rank, each on its own GPUs (``gpus``, default
    :func:`engine_gpus`), started one after the other; if one fails, those already
    started are shut down."""
    gpus = engine_gpus(options) if gpus is None else gpus
    engines: list[Any] = []
    try:
        for devices in gpus:
            if devices is not None:
                logger.info("vLLM engine %d of %d on GPUs %s", len(engines) + 1, len(gpus), devices)
            with pinned_gpus(devices):
                engines.append(start_engine(options, kwargs))
    except BaseException:
        for llm in engines:
            stop_engine(llm)
        raise
    return engines


ENGINE_FAILED = "the vLLM engine core failed (EngineDeadError; its log above says why)"


def _engine_client(llm: Any) -> tuple[Any, list[Any]]:
    """vLLM v1's engine-core client of ``llm`` and its engine-core processes.

    ``LLM.llm_engine.engine_core`` is a ``SyncMPClient`` whose ``resources`` hold the
    ``engine_dead`` flag and the ``engine_manager`` (``CoreEngineProcManager``) with the
    engine-core ``processes`` (vLLM 0.11 to 0.32 at least). An in-process engine core or
    a Ray-managed one has no processes here: only the flag is read then.
    """
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    manager = getattr(getattr(core, "resources", None), "engine_manager", None)
    processes = getattr(manager, "processes", None)
    return core, list(processes) if isinstance(processes, list) else []


def _exit_text(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = " (the kernel's out-of-memory killer, or kill -9)" if -code == signal.SIGKILL else ""
    return f"was killed by {name}{hint}"


def _exited(processes: list[Any]) -> str | None:
    for proc in processes:
        try:
            code = proc.exitcode
        except ValueError:  # a closed process object: the engine_dead flag says the rest
            continue
        if code is not None:
            name = getattr(proc, "name", "EngineCore")
            return f"the vLLM engine process {name} (pid {proc.pid}) {_exit_text(code)}"
    return None


def engine_health(llm: Any, dying: bool = False, settle_s: float = 0.5) -> str | None:
    """None while the vLLM engine behind ``llm`` can score, else why it cannot.

    An engine-core process that has exited (killed, out of memory, crashed), or the
    client's ``engine_dead`` flag (set by vLLM when the engine core reports a fatal error,
    e.g. a dead worker process, or exits). Read without waiting while the engine lives;
    once the flag is set (or ``dying``: a call just raised ``EngineDeadError``), the
    process's exit status is awaited for up to ``settle_s`` to name the cause (it can lag:
    the process may still be exiting, or vLLM's own monitor may be reaping it).
    """
    if llm is None:
        return "the vLLM engine is shut down"
    core, processes = _engine_client(llm)
    exited = _exited(processes)
    if exited is not None:
        return exited
    if not dying and not getattr(getattr(core, "resources", None), "engine_dead", False):
        return None
    deadline = time.monotonic() + settle_s
    while processes and time.monotonic() < deadline:
        time.sleep(0.05)
        exited = _exited(processes)
        if exited is not None:
            return exited
    return ENGINE_FAILED


def engines_health(engines: list[Any], dying: bool = False, settle_s: float = 0.5) -> str | None:
    """:func:`engine_health` of several engines: None while all can score, else why the
    first that cannot cannot. ``dying`` (a call raised ``EngineDeadError``): an engine's
    failure is awaited for up to ``settle_s``; none seen by then is ``ENGINE_FAILED``."""
    if len(engines) <= 1:
        return engine_health(engines[0] if engines else None, dying, settle_s)
    deadline = time.monotonic() + (settle_s if dying else 0.0)
    while True:
        failed = next((llm for llm in engines if engine_health(llm, settle_s=0.0)), None)
        if failed is not None:
            return engine_health(failed, dying=True, settle_s=settle_s)
        if time.monotonic() >= deadline:
            return ENGINE_FAILED if dying else None
        time.sleep(0.05)


def watch_engine(llm: Any, poll_s: float = 1.0) -> threading.Thread | None:
    """Wake a scoring call that waits on an engine that has died.

    vLLM marks the engine dead when an engine-core process exits, but a call already
    waiting for its outputs (``SyncMPClient.get_output``) is never woken and would wait
    forever, holding the backend. This daemon thread waits for an engine-core process to
    exit or the ``engine_dead`` flag, then puts an error in the client's outputs queue:
    the waiting call raises ``EngineDeadError`` and the backend reports itself dead.
    """
    core, processes = _engine_client(llm)
    outputs = getattr(core, "outputs_queue", None)
    resources = getattr(core, "resources", None)
    if not isinstance(outputs, queue.Queue) or resources is None:
        return None  # an in-process engine core: its errors reach the caller directly
    from multiprocessing.connection import wait

    sentinels = [p.sentinel for p in processes]

    def watch() -> None:
        while not getattr(resources, "engine_dead", False):
            if not sentinels:
                time.sleep(poll_s)
            elif wait(sentinels, timeout=poll_s):
                break
        try:
            from vllm.v1.engine.exceptions import EngineDeadError

            error: Exception = EngineDeadError()
        except Exception:  # another vLLM layout: the client turns any error into it
            error = RuntimeError("the vLLM engine died")
        outputs.put_nowait(error)

    thread = threading.Thread(target=watch, name="reranker-vllm-engine-watch", daemon=True)
    thread.start()
    return thread


def is_engine_death(exc: BaseException) -> bool:
    """Whether ``exc`` is vLLM's ``EngineDeadError`` (matched by name: its module moved)."""
    return any(cls.__name__ == "EngineDeadError" for cls in type(exc).__mro__)


def stop_engine(llm: Any) -> None:
    """Shut the engine's worker processes down and free accelerator memory."""
    if llm is None:
        return
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    for obj in (core, engine):
        shutdown = getattr(obj, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
                break
            except Exception as exc:  # best effort: the process may be exiting
                logger.debug("vLLM shutdown: %s", exc)
    del llm
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def split_over_engines(
    engines: Sequence[Any], logits_on: Callable[[Any, list[Any]], list[float]], prompts: list[Any]
) -> list[float]:
    """``logits_on(engine, share)`` on each engine at once, with engine i taking prompts
    i, i+N, i+2N, ... (an even share of the call's prompts, of every length); the values
    back in prompt order."""
    n = len(engines)
    if n == 1 or len(prompts) <= 1:
        return logits_on(engines[0], prompts)
    shares = [prompts[i::n] for i in range(min(n, len(prompts)))]
    with ThreadPoolExecutor(len(shares), thread_name_prefix="reranker-vllm-dp") as pool:
        parts = list(pool.map(logits_on, engines, shares))
    values = [0.0] * len(prompts)
    for i, part in enumerate(parts):
        values[i::n] = part
    return values


class VLLMBackendBase(RerankBackend):
    """What every vLLM backend shares, whatever its model: options and env names, the
    tokenizer, one engine per data-parallel rank (started by :meth:`_start_engines`),
    each call's prompts shared between them (:meth:`_call`), health, shutdown, and the
    device and dtype in meta. Subclasses build their prompts and implement
    :meth:`_logits_on` (one engine's raw logit of each prompt).
    """

    requires: ClassVar[tuple[str, ...]] = ("vllm", "transformers")
    Options = VLLMOptions
    env_prefix: ClassVar[str] = "RERANK_VLLM_"
    # Shorter variable names, also accepted for these two options.
    env_aliases: ClassVar[dict[str, str]] = {
        "RERANK_VLLM_AUTO_TRITON_ATTN": "auto_triton_attn_on_sm_lt_8",
        "RERANK_VLLM_ATTENTION_BACKEND": "vllm_attention_backend",
    }
    options: VLLMOptions
    _llm: Any = None  # the first engine
    _engines: tuple[Any, ...] = ()  # one per data-parallel rank
    _dead: str | None = None  # why the engine can no longer score, once it cannot

    check_model = staticmethod(check_hub_model)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._gpus = engine_gpus(self.options)  # too few GPUs: an error before any loading
        check_quantization(self.options)
        quiet_engine_logs()
        self._cache_only = check_model_source(self.options.model_name) == "cache"
        self._lock = threading.Lock()

    def _load_tokenizer(self) -> Any:
        """The model's own tokenizer (transformers ``AutoTokenizer``)."""
        from transformers import AutoTokenizer

        name = self.options.model_name
        return load_or_explain(
            name,
            "tokenizer",
            lambda: AutoTokenizer.from_pretrained(name, local_files_only=self._cache_only),
        )

    def _start_engines(self, kwargs: dict[str, Any]) -> None:
        """Start one engine per data-parallel rank with these ``vllm.LLM`` arguments."""
        self._engines = tuple(start_engines(self.options, kwargs, self._gpus))
        self._llm = self._engines[0]

    def _logits_on(self, llm: Any, prompts: list[Any]) -> list[float]:
        """The raw relevance logit of each prompt, from one call of ``llm``."""
        raise NotImplementedError

    def _engine_logits(self, prompts: list[Any]) -> list[float]:
        """The raw logit of each prompt: one call on each engine, at once; with N engines
        engine i takes prompts i, i+N, i+2N, ... (an even share of the call's prompts,
        of every length)."""
        return split_over_engines(self._engines or (self._llm,), self._logits_on, prompts)

    def _call(self, prompts: list[Any]) -> list[float]:
        """The engines' logits of ``prompts`` (one call at a time); a dead engine, before
        or during the call, becomes :class:`BackendDead`."""
        return self._guarded(lambda: self._engine_logits(prompts))

    def _guarded(self, run: Callable[[], _T]) -> _T:
        """``run()`` on the engines, one call at a time; a dead engine, before or during
        it, becomes :class:`BackendDead`."""
        dead = self.health()
        if dead:
            raise BackendDead(dead)
        with self._lock:
            try:
                return run()
            except Exception as exc:
                dead = engines_health(list(self._engines), dying=is_engine_death(exc))
                if dead is None:
                    raise
                self._dead = dead
                raise BackendDead(dead) from exc

    def meta_extra(self) -> dict[str, Any]:
        """The device and dtype the engine runs its model in, and its quantization."""
        config = getattr(getattr(self._llm, "llm_engine", None), "model_config", None)
        dtype = getattr(config, "dtype", None)
        return {
            "device": resolve_device("auto"),
            "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "quantization": self.options.quantization,
        }

    def health(self) -> str | None:
        """None while the engine can score; else why not (see :func:`engine_health`)."""
        return engines_health(list(self._engines)) or self._dead

    def close(self) -> None:
        """Shut the engines down and free their memory."""
        engines, self._engines, self._llm = self._engines, (), None
        for llm in engines:
            stop_engine(llm)
