"""The ``quantization`` option (none | fp8): never on by default, set from the config file
or each backend's environment variable, refused with its name when misspelt; what the
vLLM backends pass to ``vllm.LLM`` and where they refuse fp8. No engine is started."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reranker.backends.vllm.engine import check_fp8_on, check_quantization, engine_kwargs
from reranker.config import load_settings, resolve_backend_options
from reranker.core.errors import ConfigError
from reranker.core.options import VLLMOptions

REPO = Path(__file__).resolve().parents[2]
# each backend with the prefix of its environment variables
BACKENDS = {
    "qwen3_transformers": "RERANK_HF_",
    "cross_encoder_transformers": "RERANK_CE_",
    "qwen3_vllm": "RERANK_VLLM_",
    "qwen3_vllm_score": "RERANK_VLLM_",
    "cross_encoder_vllm": "RERANK_VLLM_",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantization_is_none_unless_set(backend):
    settings = load_settings(REPO / "config" / "config.yaml", env={})
    _, options = resolve_backend_options(settings, backend, env={})
    assert options.quantization == "none"


@pytest.mark.parametrize("backend, prefix", BACKENDS.items())
def test_environment_sets_fp8(tmp_path, backend, prefix):
    env = {"RERANK_BACKEND": backend, f"{prefix}QUANTIZATION": " fp8 "}
    settings = load_settings(write(tmp_path, ""), env=env)
    _, options = resolve_backend_options(settings, env=env)
    assert options.quantization == "fp8"


def test_config_file_sets_fp8_and_the_environment_wins(tmp_path):
    path = write(
        tmp_path,
        "services:\n  rerank:\n    backend: qwen3_transformers\n    backends:\n"
        "      qwen3_transformers:\n        quantization: fp8\n",
    )
    _, options = resolve_backend_options(load_settings(path, env={}), env={})
    assert options.quantization == "fp8"
    env = {"RERANK_HF_QUANTIZATION": "none"}
    _, options = resolve_backend_options(load_settings(path, env=env), env=env)
    assert options.quantization == "none"


def test_unknown_quantization_names_the_variable(tmp_path):
    env = {"RERANK_HF_QUANTIZATION": "int8"}
    settings = load_settings(write(tmp_path, ""), env=env)
    with pytest.raises(ConfigError) as err:
        resolve_backend_options(settings, env=env)
    assert "quantization (from RERANK_HF_QUANTIZATION)" in str(err.value)
    assert "'none' or 'fp8'" in str(err.value)


def test_fp8_takes_the_swiglu_kernel_setting(tmp_path):
    """Under fp8, ``fused_swiglu`` chooses between the fp8 kernels: any value is valid."""
    env = {"RERANK_HF_QUANTIZATION": "fp8", "RERANK_HF_FUSED_SWIGLU": "true"}
    settings = load_settings(write(tmp_path, ""), env=env)
    _, options = resolve_backend_options(settings, env=env)
    assert options.quantization == "fp8" and options.fused_swiglu is True


def test_vllm_gets_quantization_fp8_only_when_set():
    assert "quantization" not in engine_kwargs(VLLMOptions(model_name="m"), "generate")
    kwargs = engine_kwargs(VLLMOptions(model_name="m", quantization="fp8"), "pooling")
    assert kwargs["quantization"] == "fp8"


def test_vllm_fp8_in_float32_is_refused():
    with pytest.raises(ValueError, match="set dtype to auto, bfloat16 or float16"):
        VLLMOptions(model_name="m", quantization="fp8", dtype="float32")


def test_vllm_fp8_needs_a_cuda_gpu(caplog):
    check_quantization(VLLMOptions(model_name="m"))  # none: nothing to check
    check_fp8_on((9, 0))
    with pytest.raises(ConfigError, match="need a CUDA GPU .* Set quantization: none"):
        check_fp8_on(None)
    with caplog.at_level(logging.WARNING, logger="reranker.backends.vllm.engine"):
        check_fp8_on((8, 0))
    assert "weight-only" in caplog.text
