"""`reranker bench --model-shapes`: the sizes it accepts, what each size's process is
given, the model folders it reuses or refuses, and the per-size report."""

from __future__ import annotations

import json

import pytest

from reranker.bench import sizes
from reranker.bench.report import by_shape, record_params, record_shape, table
from reranker.cli import build_parser
from reranker.core.errors import ConfigError


def test_shapes_are_parsed_in_order_once():
    assert sizes.parse_shapes("0.6b, 4B,8b,4b") == ["0.6b", "4b", "8b"]
    for bad in ("", "0.6b,13b", ","):
        with pytest.raises(ConfigError, match="comma-separated"):
            sizes.parse_shapes(bad)


def test_each_size_process_gets_the_bench_options_and_its_model(tmp_path):
    args = build_parser().parse_args(
        ["bench", "--model-shapes", "0.6b,8b", "--model-dir-root", str(tmp_path)]
        + ["--backend", "qwen3_vllm", "-o", "max_num_seqs=64", "--queries", "2", "--coalesce"]
    )
    argv = sizes.bench_argv(args, tmp_path / "8b", tmp_path / "r.jsonl")
    assert argv[:5] == [
        "bench",
        "--model",
        str(tmp_path / "8b"),
        "--json-out",
        str(tmp_path / "r.jsonl"),
    ]
    assert "--model-shapes" not in argv and "--baseline" not in argv
    pairs = dict(zip(argv[5:-1:2], argv[6::2], strict=True))
    assert pairs["--backend"] == "qwen3_vllm" and pairs["--option"] == "max_num_seqs=64"
    assert pairs["--queries"] == "2" and pairs["--docs"] == "100" and argv[-1] == "--coalesce"
    assert build_parser().parse_args(argv).model == str(tmp_path / "8b")


def _fake_model(path, **marker):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / sizes.MARKER).write_text(json.dumps(marker))


def test_a_built_model_is_reused_and_a_foreign_folder_refused(tmp_path, monkeypatch):
    from reranker.testing.tiny_qwen3 import BUILDER_VERSION

    monkeypatch.setattr(sizes.subprocess, "run", lambda *a, **k: pytest.fail("built again"))
    _fake_model(tmp_path / "4b", shape="4b", builder_version=BUILDER_VERSION, dtype="bfloat16")
    assert sizes.ensure_model(tmp_path, "4b") == tmp_path / "4b"
    (tmp_path / "8b").mkdir()
    (tmp_path / "8b" / "weights.bin").write_text("mine")
    with pytest.raises(ConfigError, match="not a model built by build-test-model"):
        sizes.ensure_model(tmp_path, "8b")
    assert (tmp_path / "8b" / "weights.bin").read_text() == "mine"
    for stale in ({"dtype": "float32"}, {"builder_version": -1}, {"shape": "8b"}):
        marker = {"shape": "4b", "builder_version": BUILDER_VERSION, "dtype": "bfloat16"}
        _fake_model(tmp_path / "stale", **{**marker, **stale})
        assert not sizes.model_is_built(tmp_path / "stale", "4b")
        (tmp_path / "stale" / sizes.MARKER).unlink()
        (tmp_path / "stale" / "config.json").unlink()
        (tmp_path / "stale").rmdir()


def test_a_stale_model_is_rebuilt_in_place(tmp_path, monkeypatch):
    calls = []

    def build(command, **kwargs):
        calls.append(command)
        partial = command[3]
        _fake_model(
            tmp_path / partial.rsplit("/", 1)[1],
            shape="0.6b",
            builder_version=sizes_builder_version(),
            dtype="bfloat16",
        )
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(sizes.subprocess, "run", build)
    _fake_model(tmp_path / "0.6b", shape="0.6b", builder_version=0, dtype="float32")
    assert sizes.ensure_model(tmp_path, "0.6b") == tmp_path / "0.6b"
    assert calls[0][-6:] == ["--shape", "0.6b", "--dtype", "bfloat16", "--device", "cpu"]
    assert sizes.model_is_built(tmp_path / "0.6b", "0.6b")
    assert not (tmp_path / ".0.6b.partial").exists()


def test_a_build_that_fails_on_the_gpu_is_made_on_the_cpu(tmp_path, monkeypatch, capsys):
    devices = []

    def build(command, **kwargs):
        devices.append(command[-1])
        if command[-1] == "cuda":  # e.g. no room on the GPU for the model
            (tmp_path / ".4b.partial").mkdir()  # a half-written folder, removed
            return type("Done", (), {"returncode": 1})()
        _fake_model(
            tmp_path / ".4b.partial",
            shape="4b",
            builder_version=sizes_builder_version(),
            dtype="bfloat16",
        )
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(sizes, "_has_cuda", lambda: True)
    monkeypatch.setattr(sizes.subprocess, "run", build)
    assert sizes.ensure_model(tmp_path, "4b") == tmp_path / "4b"
    assert devices == ["cuda", "cpu"] and sizes.model_is_built(tmp_path / "4b", "4b")
    assert "(weights drawn on cpu)" in capsys.readouterr().err


def test_a_build_that_fails_everywhere_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "_has_cuda", lambda: True)
    monkeypatch.setattr(
        sizes.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 3})()
    )
    with pytest.raises(ConfigError, match="building the 8b model failed"):
        sizes.ensure_model(tmp_path, "8b")
    assert not (tmp_path / "8b").exists() and not (tmp_path / ".8b.partial").exists()


def sizes_builder_version():
    from reranker.testing.tiny_qwen3 import BUILDER_VERSION

    return BUILDER_VERSION


def test_model_shapes_replace_model_and_need_a_root(tmp_path):
    parse = build_parser().parse_args
    with pytest.raises(ConfigError, match="leave out --model"):
        sizes.run_sizes(parse(["bench", "--model-shapes", "4b", "--model", "x"]))
    with pytest.raises(ConfigError, match="--model-dir-root"):
        sizes.run_sizes(parse(["bench", "--model-shapes", "4b"]))


def test_a_cross_encoder_backend_is_refused_before_anything_is_built(tmp_path):
    args = build_parser().parse_args(
        ["bench", "--model-shapes", "4b", "--model-dir-root", str(tmp_path / "m")]
        + ["--backend", "cross_encoder_transformers"]
    )
    with pytest.raises(ConfigError, match="builds Qwen3-Reranker models"):
        sizes.run_sizes(args)
    assert not (tmp_path / "m").exists()


def record(shape, backend, pairs_per_s, **extra):
    return {"shape": shape, "backend": backend, "pairs_per_s": pairs_per_s,
            "device": "NVIDIA H200", **extra}  # fmt: skip


def test_report_has_a_section_per_size_with_its_own_flops_and_peak_memory():
    records = [
        record("0.6b", "qwen3_transformers", 1000.0, tokens_per_s=500_000,
               peak_torch_mem_gib=2.0, peak_host_mem_gib=3.1),
        record("8b", "qwen3_transformers", 100.0, tokens_per_s=50_000,
               peak_torch_mem_gib=25.0, peak_host_mem_gib=4.2),
        record("8b", "baseline:qwen3_transformers", 40.0, baseline="model card"),
    ]  # fmt: skip
    text = by_shape(records)
    first, second = text.split("### ")[1:]
    assert first.startswith("0.6b\n") and second.startswith("8b\n")
    assert "peak host RSS (GiB)" in first and "| 2.0 | 3.1 | NVIDIA H200 |" in first
    # 500,000 tokens/s x 2 x 0.44e9 / 799e12 = 55.1 %; 50,000 x 2 x 6.95e9 / 799e12 = 86.9 %
    assert "| qwen3_transformers | 1000.0 | 500,000 | 55.1 |" in first
    assert "| qwen3_transformers | 100.0 | 50,000 | 86.9 |" in second
    assert "no raw baseline" in first and "| qwen3_transformers | 100.0 | 2.50 |" in second
    assert "peak host RSS" not in table(records)  # the plain table keeps its columns


def test_a_records_size_comes_from_its_shape_or_its_models_name():
    assert record_shape({"shape": "4b", "model": "x"}) == "4b"
    assert record_shape({"model": "Qwen/Qwen3-Reranker-8B"}) == "8b"
    assert record_shape({"model": ".cache/qwen3-reranker-0.6b-shape"}) == "0.6b"
    assert record_shape({"model": "BAAI/bge-reranker-v2-m3"}) is None
    assert record_params({"model": "Qwen/Qwen3-Reranker-4B"}) == pytest.approx(3.633e9, 1e-3)
    assert record_params({"model": "elsewhere"}) == 0.44e9
