"""The Qwen3-Reranker sizes of the test-model builder: the 0.6B / 4B / 8B configs (checked
on the meta device: no weights are made), and weights created in the target dtype."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.cli import main  # noqa: E402
from reranker.testing import tiny_qwen3  # noqa: E402

# The published models' configs (Qwen3-Reranker-0.6B / -4B / -8B config.json).
PUBLISHED = {
    "0.6b": dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_window_layers=28, tie_word_embeddings=True,
    ),
    "4b": dict(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_window_layers=36, tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_window_layers=36, tie_word_embeddings=False,
    ),
}  # fmt: skip
COMMON = dict(
    vocab_size=151669, max_position_embeddings=40960, rms_norm_eps=1e-6, hidden_act="silu",
    bos_token_id=151643, eos_token_id=151645, attention_bias=False, use_sliding_window=False,
)  # fmt: skip
# (parameters, non-embedding parameters) in billions, as Qwen3's model cards give them
SIZES = {"0.6b": (0.596, 0.440), "4b": (4.022, 3.633), "8b": (8.189, 6.946)}


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_benchmark_shapes_have_the_published_configs(shape):
    config = tiny_qwen3.make_config(shape)
    for key, value in {**COMMON, **PUBLISHED[shape]}.items():
        assert getattr(config, key) == value, key
    assert config.rope_parameters["rope_theta"] == 1000000.0
    assert set(config.layer_types) == {"full_attention"}


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_meta_device_model_has_the_published_size_in_bfloat16(shape):
    import torch

    model = tiny_qwen3.instantiate(tiny_qwen3.make_config(shape), "bfloat16", device="meta")
    weight = model.model.embed_tokens.weight
    assert weight.device.type == "meta" and weight.dtype == torch.bfloat16
    total, non_embedding = SIZES[shape]
    assert round(model.num_parameters() / 1e9, 3) == total
    assert round(tiny_qwen3.non_embedding_params(shape) / 1e9, 3) == non_embedding
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied is PUBLISHED[shape]["tie_word_embeddings"]


def test_large_shapes_default_to_bfloat16():
    assert [tiny_qwen3.default_dtype(s) for s in ("tiny", "0.6b", "4b", "8b")] == [
        "float32",
        "float32",
        "bfloat16",
        "bfloat16",
    ]


def test_a_benchmark_shape_is_built_in_its_dtype(tmp_path, monkeypatch):
    import torch
    from safetensors import safe_open

    # the 4b/8b path on a model of the tiny size: random weights made in bfloat16 directly
    small = {k: v for k, v in tiny_qwen3.SHAPES["tiny"].items() if k != "initializer_range"}
    monkeypatch.setitem(tiny_qwen3.SHAPES, "small", {**small, "tie_word_embeddings": False})
    made = []
    real = tiny_qwen3.instantiate

    def spy(config, dtype, device="cpu"):
        model = real(config, dtype, device)
        made.append({p.dtype for p in model.parameters()})
        return model

    monkeypatch.setattr(tiny_qwen3, "instantiate", spy)
    out = tiny_qwen3.build_model(tmp_path / "small", shape="small", dtype="bfloat16")
    assert made == [{torch.bfloat16}]
    marker = json.loads((out / "reranker_test_model.json").read_text())
    assert marker == {
        "shape": "small",
        "seed": 0,
        "builder_version": 2,
        "dtype": "bfloat16",
        "device": "cpu",  # where the random numbers were drawn
    }
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert "lm_head.weight" in names
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
    # weights as readable as the config (a service may run as another user)
    mode = (out / "config.json").stat().st_mode & 0o777
    assert (out / "model.safetensors").stat().st_mode & 0o777 == mode


def test_the_sequence_classifier_stays_at_0_6b(tmp_path, capsys):
    code = main(["build-test-model", str(tmp_path / "x"), "--family", "qwen3-seq-cls"] + [
        "--shape", "8b"])  # fmt: skip
    assert code == 2 and "built as tiny or 0.6b" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "family, shape", [("bert", "base"), ("qwen3-seq-cls", "0.6b"), ("qwen3", "tiny")]
)
def test_device_is_for_the_published_qwen3_shapes_only(tmp_path, capsys, family, shape):
    code = main(["build-test-model", str(tmp_path / "x"), "--family", family] + [
        "--shape", shape, "--device", "cuda"])  # fmt: skip
    assert code == 2 and f"{family} {shape} is built on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_device_cuda_without_a_gpu_is_one_line_and_no_folder(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    code = main(["build-test-model", str(tmp_path / "x"), "--shape", "0.6b", "--device", "cuda"])
    assert code == 2 and "torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
