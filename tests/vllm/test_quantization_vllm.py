"""``quantization: fp8`` on the vLLM backends, against the installed vLLM: the engine
arguments we build are vLLM's own and resolve to its fp8 quantization; vLLM's CPU build
(whose engine dies loading fp8 weights) is refused at once with the fix, before any
engine starts."""

from __future__ import annotations

import dataclasses
import time

import pytest
from engines import vllm_backend
from pairs import MAX_MODEL_LEN

from reranker.backends.vllm.engine import cuda_capability, engine_kwargs
from reranker.core.errors import ConfigError
from reranker.formats.qwen3 import Qwen3VLLMOptions

BACKENDS = ["qwen3_vllm", "qwen3_vllm_score", "cross_encoder_vllm"]


@pytest.mark.parametrize("runner", ["generate", "pooling"])
def test_engine_arguments_resolve_to_vllm_fp8(tiny_model_dir, runner):
    from vllm.engine.arg_utils import EngineArgs

    options = Qwen3VLLMOptions(
        model_name=str(tiny_model_dir),
        max_model_len=MAX_MODEL_LEN,
        dtype="bfloat16",  # vLLM's fp8 computes in 16 bits (auto is float32 on a CPU)
        quantization="fp8",
    )
    kwargs = engine_kwargs(options, runner)
    assert kwargs["quantization"] == "fp8"
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(kwargs) <= fields  # every argument is one vLLM's engine takes
    config = EngineArgs(**kwargs).create_engine_config()
    assert config.model_config.quantization == "fp8"
    assert config.quant_config is not None


@pytest.mark.skipif(cuda_capability() is not None, reason="vLLM's CPU build only")
@pytest.mark.parametrize("name", BACKENDS)
def test_fp8_on_the_cpu_build_is_refused_before_an_engine_starts(tiny_model_dir, name):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="need a CUDA GPU .* Set quantization: none"):
        vllm_backend(name, tiny_model_dir, quantization="fp8", dtype="bfloat16")
    assert time.perf_counter() - started < 10  # no engine was started
