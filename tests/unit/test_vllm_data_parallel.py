"""``data_parallel_size`` of the vLLM backends: validation, each engine's GPUs, how a
call's prompts are shared between engines, their health; no vLLM engine is started."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from reranker.backends.vllm import engine as vllm_engine
from reranker.backends.vllm.engine import (
    ENGINE_FAILED,
    VLLMBackendBase,
    engine_gpus,
    engine_kwargs,
    engines_health,
    pinned_gpus,
    start_engines,
)
from reranker.backends.vllm.qwen3_generate import Qwen3VLLMBackend
from reranker.backends.vllm.qwen3_score import Qwen3VLLMScoreBackend
from reranker.core.errors import ConfigError
from reranker.core.options import VLLMOptions


def test_the_option_validates():
    assert VLLMOptions().data_parallel_size == 1
    assert VLLMOptions(data_parallel_size=4, tensor_parallel_size=2).data_parallel_size == 4
    for bad in (0, -1, "two"):
        with pytest.raises(ValidationError, match="data_parallel_size"):
            VLLMOptions(data_parallel_size=bad)


def test_vllm_llm_gets_no_data_parallel_size():
    # vllm.LLM refuses data_parallel_size > 1; each rank is an engine of its own.
    kwargs = engine_kwargs(VLLMOptions(data_parallel_size=2, tensor_parallel_size=2), "pooling")
    assert "data_parallel_size" not in kwargs
    assert kwargs["tensor_parallel_size"] == 2


def test_each_engine_gets_its_own_gpus():
    opts = VLLMOptions(data_parallel_size=2)
    assert engine_gpus(VLLMOptions(), visible=[]) == [None]  # one engine: vLLM picks
    assert engine_gpus(opts, visible=["0", "1", "2"]) == ["0", "1"]
    assert engine_gpus(opts, visible=["3", "5"]) == ["3", "5"]  # CUDA_VISIBLE_DEVICES names
    tp2 = VLLMOptions(data_parallel_size=2, tensor_parallel_size=2)
    assert engine_gpus(tp2, visible=["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert engine_gpus(tp2, visible=["GPU-a", "GPU-b", "GPU-c", "GPU-d"]) == [
        "GPU-a,GPU-b",
        "GPU-c,GPU-d",
    ]


def test_too_few_gpus_is_a_config_error():
    tp2 = VLLMOptions(data_parallel_size=2, tensor_parallel_size=2)
    with pytest.raises(ConfigError, match=r"needs 4 CUDA GPUs; 3 visible \(0,1,2\)"):
        engine_gpus(tp2, visible=["0", "1", "2"])
    with pytest.raises(ConfigError, match=r"has none.*services\.rerank\.scale"):
        engine_gpus(VLLMOptions(data_parallel_size=2), visible=[])


@pytest.mark.parametrize("backend", [Qwen3VLLMBackend, Qwen3VLLMScoreBackend])
def test_without_cuda_the_backend_refuses_before_loading(monkeypatch, backend):
    """vLLM's CPU build: a typed error at once, no tokenizer, no engine, no hang."""
    monkeypatch.setattr(vllm_engine, "cuda_capability", lambda: None)

    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing is loaded")

    monkeypatch.setattr(vllm_engine, "load_or_explain", no_loading)
    with pytest.raises(ConfigError, match="data_parallel_size 2: 2 engines need 2 CUDA GPUs"):
        backend({"model_name": "unused", "data_parallel_size": 2})


def test_an_engine_starts_with_only_its_gpus_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    seen: list[str | None] = []
    stopped: list[Any] = []

    def start(options: Any, kwargs: Any) -> str:
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if len(seen) == 4:
            raise RuntimeError("engine 4 failed")
        return f"engine{len(seen)}"

    monkeypatch.setattr(vllm_engine, "start_engine", start)
    monkeypatch.setattr(vllm_engine, "stop_engine", stopped.append)
    opts = VLLMOptions(data_parallel_size=2)
    assert start_engines(opts, {}, ["4", "6"]) == ["engine1", "engine2"]
    assert seen == ["4", "6"] and os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    # One failing engine: those already started are shut down, the error goes on.
    with pytest.raises(RuntimeError, match="engine 4 failed"):
        start_engines(opts, {}, ["4", "6"])
    assert stopped == ["engine3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"


def test_pinning_restores_an_unset_variable(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pinned_gpus("1"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with pinned_gpus(None):
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


class _Shares(VLLMBackendBase):
    """The base class's call sharing, with engines that answer 100 * engine + prompt."""

    def __init__(self, engines: int) -> None:
        self._engines = tuple(range(engines))
        self._llm = 0
        self.calls: dict[int, list[int]] = {}
        self.threads: set[str] = set()

    def _logits_on(self, llm: Any, prompts: list[Any]) -> list[float]:
        self.calls[llm] = list(prompts)
        self.threads.add(threading.current_thread().name)
        return [100.0 * llm + p for p in prompts]


def test_a_call_is_shared_between_the_engines_and_put_back_in_order():
    backend = _Shares(engines=3)
    values = backend._engine_logits(list(range(8)))
    assert backend.calls == {0: [0, 3, 6], 1: [1, 4, 7], 2: [2, 5]}
    assert values == [0, 101, 202, 3, 104, 205, 6, 107]
    assert all(name.startswith("reranker-vllm-dp") for name in backend.threads)
    few = _Shares(engines=3)
    assert few._engine_logits([0, 1]) == [0, 101]  # an engine with no prompt is not called
    assert set(few.calls) == {0, 1}
    one = _Shares(engines=1)
    assert one._engine_logits([0, 1, 2]) == [0, 1, 2]
    assert one.threads == {threading.current_thread().name}


def _fake_llm(dead: bool = False) -> SimpleNamespace:
    resources = SimpleNamespace(engine_dead=dead, engine_manager=SimpleNamespace(processes=[]))
    return SimpleNamespace(
        llm_engine=SimpleNamespace(engine_core=SimpleNamespace(resources=resources))
    )


def test_one_dead_engine_makes_the_backend_dead():
    alive, dead = _fake_llm(), _fake_llm(dead=True)
    assert engines_health([alive, _fake_llm()]) is None
    assert engines_health([alive, dead]) == ENGINE_FAILED
    assert engines_health([]) == "the vLLM engine is shut down"
    # A call raised EngineDeadError but no engine says so (yet): still dead.
    assert engines_health([alive, _fake_llm()], dying=True, settle_s=0.0) == ENGINE_FAILED
