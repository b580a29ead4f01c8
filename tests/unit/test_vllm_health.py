"""The vLLM backends' engine liveness check and waiter wake-up, on stand-ins of vLLM's
client (``LLM.llm_engine.engine_core``) around real processes; no vLLM needed."""

from __future__ import annotations

import multiprocessing
import queue
import time
from types import SimpleNamespace

from reranker.backends.vllm.engine import (
    ENGINE_FAILED,
    engine_health,
    is_engine_death,
    watch_engine,
)


def _sleep() -> None:
    time.sleep(60)


def fake_llm(processes: list) -> SimpleNamespace:
    """What the code reads of vLLM v1's LLM: engine_core.resources.{engine_dead,
    engine_manager.processes} and engine_core.outputs_queue."""
    resources = SimpleNamespace(
        engine_dead=False, engine_manager=SimpleNamespace(processes=processes)
    )
    core = SimpleNamespace(resources=resources, outputs_queue=queue.Queue())
    return SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))


def test_a_killed_engine_process_is_named_with_its_signal():
    proc = multiprocessing.get_context("spawn").Process(target=_sleep, name="EngineCore")
    proc.start()
    try:
        llm = fake_llm([proc])
        assert engine_health(llm) is None
        proc.kill()
        proc.join(10)
        reason = engine_health(llm)
        assert reason is not None
        assert f"EngineCore (pid {proc.pid}) was killed by SIGKILL" in reason
        assert "out-of-memory" in reason
    finally:
        if proc.is_alive():
            proc.kill()


def test_the_engine_dead_flag_alone_is_death():
    llm = fake_llm([])
    assert engine_health(llm) is None
    llm.llm_engine.engine_core.resources.engine_dead = True
    assert engine_health(llm) == ENGINE_FAILED
    assert engine_health(None) == "the vLLM engine is shut down"
    assert engine_health(SimpleNamespace()) is None  # another layout: taken as alive


def test_a_call_waiting_on_a_dead_engine_is_woken():
    proc = multiprocessing.get_context("spawn").Process(target=_sleep, name="EngineCore")
    proc.start()
    try:
        llm = fake_llm([proc])
        outputs = llm.llm_engine.engine_core.outputs_queue
        thread = watch_engine(llm, poll_s=0.1)
        assert thread is not None
        proc.kill()
        woken = outputs.get(timeout=10)  # what SyncMPClient.get_output would raise
        assert isinstance(woken, Exception)
        thread.join(5)
        assert not thread.is_alive()
    finally:
        if proc.is_alive():
            proc.kill()


def test_engine_death_is_recognised_by_name():
    class EngineDeadError(Exception):
        pass

    class Sub(EngineDeadError):
        pass

    assert is_engine_death(Sub()) and not is_engine_death(RuntimeError("x"))
