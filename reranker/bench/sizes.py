"""``reranker bench --model-shapes 0.6b,4b,8b --model-dir-root DIR``: one benchmark per
Qwen3-Reranker size.

Each size is a random-weight model of the published config (``build-test-model --shape``),
built once in bfloat16 into ``DIR/<shape>`` and reused by later runs; each is benched in a
``reranker bench`` process of its own, so that a record's peak memory is that size's.
The records get a ``shape`` key, are appended to ``--json-out``, and are printed as one
table per size (:func:`reranker.bench.report.by_shape`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from reranker.core.errors import ConfigError

BUILD_DTYPE = "bfloat16"
MARKER = "reranker_test_model.json"
# `reranker bench` options passed on to each size's process as they are.
FORWARDED_VALUES = ("queries", "docs", "min_words", "max_words", "seed", "repeat", "warmup")
FORWARDED_FLAGS = ("baseline", "coalesce")


def parse_shapes(text: str) -> list[str]:
    """``"0.6b,4b,8b"`` -> the shapes, in order, each a Qwen3 test-model shape."""
    from reranker.testing.tiny_qwen3 import SHAPES

    shapes = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ConfigError(
            f"--model-shapes {text!r}: expected a comma-separated list of {', '.join(SHAPES)}"
        )
    return list(dict.fromkeys(shapes))


def model_is_built(path: Path, shape: str) -> bool:
    """Whether ``path`` holds the current builder's ``shape`` model in bfloat16."""
    from reranker.testing.tiny_qwen3 import BUILDER_VERSION

    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    wanted = {"shape": shape, "builder_version": BUILDER_VERSION, "dtype": BUILD_DTYPE}
    return (path / "config.json").is_file() and all(marker.get(k) == v for k, v in wanted.items())


def ensure_model(root: Path, shape: str) -> Path:
    """``root/<shape>``, built there first (in a process of its own, then moved into
    place: an interrupted build leaves no half model) unless an earlier run built it.
    A folder there that this builder did not make is an error, never overwritten."""
    path = root / shape
    if model_is_built(path, shape):
        print(f"{shape}: model in {path}", file=sys.stderr, flush=True)
        return path
    if path.exists():
        if not (path / MARKER).is_file():
            raise ConfigError(
                f"{path} exists and is not a model built by build-test-model; move it or "
                "choose another --model-dir-root"
            )
        shutil.rmtree(path)  # an earlier builder's, or another dtype's: built again
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{shape}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "reranker.testing.tiny_qwen3", str(partial)]
    command += ["--shape", shape, "--dtype", BUILD_DTYPE]
    # random weights drawn on the GPU take seconds, not minutes, for 4b/8b; the CPU is
    # the fallback (a GPU without room for the model). The marker file says which.
    for device in ["cuda", "cpu"] if _has_cuda() else ["cpu"]:
        print(
            f"{shape}: building a random-weight model in {path} (weights drawn on {device}) ...",
            file=sys.stderr,
            flush=True,
        )
        done = subprocess.run(
            [*command, "--device", device], env=_child_env(), stdout=subprocess.DEVNULL
        )
        if done.returncode == 0:
            break
        shutil.rmtree(partial, ignore_errors=True)
    else:
        raise ConfigError(f"building the {shape} model failed (exit status {done.returncode})")
    partial.rename(path)
    return path


def bench_argv(args: argparse.Namespace, model: Path, json_out: Path) -> list[str]:
    """The ``reranker bench`` arguments of one size's process."""
    argv = ["bench", "--model", str(model), "--json-out", str(json_out)]
    for name in ("backend", "config"):
        if getattr(args, name):
            argv += [f"--{name}", getattr(args, name)]
    for item in args.option or []:
        argv += ["--option", item]
    for name in FORWARDED_VALUES:
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    argv += [f"--{name}" for name in FORWARDED_FLAGS if getattr(args, name)]
    return argv


def run_sizes(args: argparse.Namespace) -> int:
    """Build and bench each of ``args.model_shapes``; print a table per size. Exit
    status 1 when a size's bench failed (the other sizes still run)."""
    from reranker.bench.report import by_shape

    if args.model:
        raise ConfigError("--model-shapes builds the models it benches; leave out --model")
    if not args.model_dir_root:
        raise ConfigError("--model-shapes needs --model-dir-root DIR (models are built there)")
    shapes = parse_shapes(args.model_shapes)
    _check_qwen3_backend(args)
    root = Path(args.model_dir_root)
    records: list[dict[str, Any]] = []
    failed = []
    for shape in shapes:
        model = ensure_model(root, shape)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "records.jsonl"
            print(f"=== {shape}", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "reranker.cli", *bench_argv(args, model, out)]
            done = subprocess.run(command, env=_child_env())
            got = _read_records(out)
        if done.returncode != 0:
            failed.append(f"{shape} (exit status {done.returncode})")
        for record in got:
            records.append({"shape": shape, **record})
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    if records:
        print(by_shape(records), flush=True)
    for what in failed:
        print(f"error: the bench of {what} failed", file=sys.stderr)
    return 1 if failed else 0


def _check_qwen3_backend(args: argparse.Namespace) -> None:
    """The sizes are Qwen3-Reranker models: a backend of another family is an error
    before anything is built."""
    from reranker.config import load_settings
    from reranker.core.registry import load_backend_class
    from reranker.formats.qwen3 import Qwen3PromptFormat

    name = args.backend or load_settings(args.config).backend
    if not issubclass(load_backend_class(name), Qwen3PromptFormat):
        raise ConfigError(
            f"--model-shapes builds Qwen3-Reranker models; backend {name} scores another "
            "family (use qwen3_transformers, qwen3_vllm or qwen3_vllm_score)"
        )


def _has_cuda() -> bool:
    """Whether torch sees a CUDA device here (models are then built on it)."""
    import torch

    return bool(torch.cuda.is_available())


def _child_env() -> dict[str, str]:
    """This environment, with this package importable in the child."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _read_records(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
