"""Config file + environment overrides, and the errors a bad config gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from reranker.config import load_settings, resolve_backend_options
from reranker.core.errors import ConfigError, UnknownBackend

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid():
    settings = load_settings(REPO / "config" / "config.yaml", env={})
    assert settings.backend == "qwen3_transformers"
    for name in ("qwen3_transformers", "qwen3_vllm", "qwen3_vllm_score"):
        cls, options = resolve_backend_options(settings, name, env={})
        assert options.model_name == "Qwen/Qwen3-Reranker-0.6B"
        assert cls.name == name


def test_env_overrides_backend_model_and_options(tmp_path):
    path = write(tmp_path, "services:\n  rerank:\n    backend: qwen3_transformers\n")
    env = {
        "RERANK_BACKEND": "qwen3_vllm",
        "RERANK_MODEL": "/models/x",
        "RERANK_VLLM_INFER_BATCH_SIZE": "7",
        "RERANK_VLLM_SORT_BY_DOC_LENGTH": "false",
        "RERANK_VLLM_HF_OVERRIDES": '{"a": 1}',
        "RERANK_VLLM_AUTO_TRITON_ATTN": "0",
        "RERANK_VLLM_ATTENTION_BACKEND": "TRITON_ATTN",
    }
    settings = load_settings(path, env=env)
    assert settings.backend == "qwen3_vllm"
    _, opts = resolve_backend_options(settings, env=env)
    assert opts.model_name == "/models/x"
    assert opts.infer_batch_size == 7
    assert opts.sort_by_doc_length is False
    assert opts.hf_overrides == {"a": 1}
    assert opts.auto_triton_attn_on_sm_lt_8 is False
    assert opts.vllm_attention_backend == "TRITON_ATTN"


def test_rerank_config_env_names_the_file(tmp_path):
    path = write(tmp_path, "services:\n  rerank:\n    backend: qwen3_vllm_score\n")
    assert load_settings(env={"RERANK_CONFIG": str(path)}).backend == "qwen3_vllm_score"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"RERANK_CONFIG": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("services:\n  rerank:\n    backnd: x\n", "services.rerank.backnd: unknown key"),
        ("services:\n  rerank:\n    server:\n      port: -1\n", "services.rerank.server.port"),
        ("services: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_bad_file_names_the_key(tmp_path, yaml_text, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, yaml_text), env={})
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (
            "infer_batch_sise: 8",
            "services.rerank.backends.qwen3_transformers.infer_batch_sise: unknown key",
        ),
        ("infer_batch_size: 0", "infer_batch_size: Input should be greater than or equal to 1"),
        ("dtype: float8", "dtype"),
        ("instruction_format: fancy", "instruction_format"),
        ("document_template: 'no placeholder'", "{doc}"),
        ("batch_layout: ragged", "batch_layout"),
        ("torch_compile: sometimes", "torch_compile"),
        ("attention_kernel: flash_attn_2", "attention_kernel"),
        ("compile_wrapper: rust", "compile_wrapper"),
        (
            "torch_compile: false\n        compile_wrapper: cpp",
            "compile_wrapper 'cpp' launches compiled layers",
        ),
        (
            "batch_layout: packed\n        attn_implementation: eager",
            "batch_layout 'packed' runs its own attention",
        ),
        (
            "batch_layout: padded\n        share_query_prefix: true",
            "share_query_prefix needs packed batches",
        ),
        ("cuda_graphs: always", "cuda_graphs"),
        ("cuda_graph_max_tokens: 1024", "cuda_graph_max_tokens"),
        (
            "batch_layout: padded\n        cuda_graphs: true",
            "cuda_graphs replays packed batches",
        ),
        (
            "batch_layout: padded\n        fused_qk_norm_rope: true",
            "fused_qk_norm_rope runs in packed batches",
        ),
        ("fused_qk_norm_rope: sometimes", "fused_qk_norm_rope"),
    ],
)
def test_bad_backend_options_name_the_key(tmp_path, options, fragment):
    path = write(
        tmp_path,
        "services:\n  rerank:\n    backend: qwen3_transformers\n    backends:\n"
        f"      qwen3_transformers:\n        {options}\n",
    )
    settings = load_settings(path, env={})
    with pytest.raises(ConfigError) as err:
        resolve_backend_options(settings, env={})
    assert fragment in str(err.value)


def test_bad_env_value_names_the_option(tmp_path):
    settings = load_settings(write(tmp_path, ""), env={})
    with pytest.raises(ConfigError, match="max_model_len"):
        resolve_backend_options(settings, env={"RERANK_HF_MAX_MODEL_LEN": "lots"})


def test_unknown_backend_lists_known(tmp_path):
    settings = load_settings(write(tmp_path, ""), env={"RERANK_BACKEND": "nope"})
    with pytest.raises(UnknownBackend) as err:
        resolve_backend_options(settings, env={})
    assert "qwen3_transformers" in str(err.value) and "qwen3_vllm" in str(err.value)


@pytest.mark.parametrize(
    "env, fragments",
    [
        (
            {"RERANK_HF_MAX_MODEL_LEN": "lots"},
            ["qwen3_transformers.max_model_len (from RERANK_HF_MAX_MODEL_LEN)", "'lots'"],
        ),
        (
            {"RERANK_BACKEND": "qwen3_vllm", "RERANK_VLLM_HF_OVERRIDES": "{a"},
            ["RERANK_VLLM_HF_OVERRIDES: cannot parse JSON value '{a'"],
        ),
        (
            {"RERANK_BACKEND": "qwen3_vllm", "RERANK_VLLM_ATTENTION_BACKEND": "[x"},
            ["RERANK_VLLM_ATTENTION_BACKEND: cannot parse JSON value"],
        ),
        (
            {"RERANK_BACKEND": "qwen3_vllm_score", "RERANK_VLLM_GPU_MEMORY_UTILIZATION": "1.5"},
            ["gpu_memory_utilization (from RERANK_VLLM_GPU_MEMORY_UTILIZATION)"],
        ),
    ],
)
def test_bad_env_value_names_the_variable(tmp_path, env, fragments):
    settings = load_settings(write(tmp_path, ""), env=env)
    with pytest.raises(ConfigError) as err:
        resolve_backend_options(settings, env=env)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_env_precedence_over_the_file(tmp_path):
    path = write(
        tmp_path,
        "services:\n  rerank:\n    backend: qwen3_vllm\n    backends:\n      qwen3_vllm:\n"
        "        model_name: from-file\n        hf_overrides: {a: 1, b: 2}\n"
        "        infer_batch_size: 5\n        max_model_len: 2048\n",
    )
    env = {
        "RERANK_MODEL": " from-rerank-model ",  # wins over the backend's own variable
        "RERANK_VLLM_MODEL_NAME": "from-prefixed",
        "RERANK_VLLM_VLLM_ATTENTION_BACKEND": "FROM_PREFIXED",
        "RERANK_VLLM_ATTENTION_BACKEND": "FROM_ALIAS",  # the short name wins
        "RERANK_VLLM_HF_OVERRIDES": '{"c": 3}',  # replaces the file's dict whole
        "RERANK_VLLM_INFER_BATCH_SIZE": "  9 ",
        "RERANK_VLLM_MAX_MODEL_LEN": "   ",  # blank: the file's value stays
        "rerank_vllm_sort_by_doc_length": "false",  # names are upper case: ignored
    }
    _, opts = resolve_backend_options(load_settings(path, env=env), env=env)
    assert opts.model_name == "from-rerank-model"
    assert opts.vllm_attention_backend == "FROM_ALIAS"
    assert opts.hf_overrides == {"c": 3}
    assert opts.infer_batch_size == 9
    assert opts.max_model_len == 2048
    assert opts.sort_by_doc_length is True
    assert "sort_by_doc_length" not in opts.model_fields_set


def test_env_strings_are_json_only_in_brackets(tmp_path):
    env = {"RERANK_HF_INSTRUCTION": "  judge the document  ", "RERANK_MODEL": "[local]"}
    _, opts = resolve_backend_options(load_settings(write(tmp_path, ""), env=env), env=env)
    assert opts.instruction == "judge the document"
    assert opts.model_name == "[local]"  # a path or hub id, never parsed


def test_rerank_backend_overrides_the_file_only(tmp_path, monkeypatch):
    from reranker.config import Settings

    path = write(tmp_path, "services:\n  rerank:\n    backend: qwen3_vllm\n")
    assert load_settings(path, env={"RERANK_BACKEND": " qwen3_vllm_score "}).backend == (
        "qwen3_vllm_score"
    )
    assert load_settings(path, env={"RERANK_BACKEND": "  "}).backend == "qwen3_vllm"
    monkeypatch.setenv("RERANK_BACKEND", "qwen3_vllm")
    assert Settings().backend == "qwen3_transformers"  # no file, no environment
    with pytest.raises(ConfigError, match="services must be a mapping"):
        load_settings(write(tmp_path, "services: [1]\n"), env={"RERANK_BACKEND": "qwen3_vllm"})
