"""The plugin registry, with fake backends registered through a real entry point.

Each check runs in a fresh interpreter whose sys.path holds tests/unit/fake_plugin (a
package with a real ``*.dist-info/entry_points.txt``), so importlib.metadata and
stevedore discover the fakes exactly as they would a pip-installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

FAKE = Path(__file__).parent / "fake_plugin"


def run(code: str) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_list_backends_is_lenient_and_imports_nothing_heavy():
    result = run("""
        import json, sys
        from reranker.core.registry import list_backends
        infos = {b.name: b for b in list_backends()}
        print(json.dumps({
            "names": sorted(infos),
            "length": infos["fake_length"].importable,
            "missing": infos["fake_missing"].missing,
            "broken": infos["fake_broken_import"].error,
            "not_backend": infos["fake_not_backend"].error,
            "heavy": [m for m in ("torch", "vllm", "transformers") if m in sys.modules],
        }))
    """)
    assert {"fake_length", "qwen3_transformers", "qwen3_vllm", "qwen3_vllm_score"} <= set(
        result["names"]
    )
    assert result["length"] is True
    assert result["missing"] == ["surely_not_installed_module_xyz"]
    assert "setup_reranker_venv.sh fake_broken_import" in result["broken"]
    assert "not a RerankBackend" in result["not_backend"]
    assert result["heavy"] == []


def test_load_is_strict_and_only_imports_the_chosen_backend():
    result = run("""
        import json, sys
        from reranker.core.registry import load_backend
        from reranker.core.errors import BackendUnavailable, UnknownBackend
        out = {}
        b = load_backend("fake_length", {"model_name": "m"})
        out["scores"] = b.score("abc", ["abcdef", "", "ab"], normalize=False)
        out["chosen_only"] = sorted(
            m for m in sys.modules if m.startswith("reranker.backends."))
        for name in ("fake_missing", "fake_broken_import", "nope"):
            try:
                load_backend(name)
            except (BackendUnavailable, UnknownBackend) as exc:
                out[name] = [type(exc).__name__, str(exc)]
        print(json.dumps(out))
    """)
    assert result["scores"] == [3.0, -sys.float_info.max, -1.0]  # "" is unusable
    assert result["chosen_only"] == []
    assert result["fake_missing"][0] == "BackendUnavailable"
    assert "scripts/setup_reranker_venv.sh fake_missing" in result["fake_missing"][1]
    assert "surely_not_installed_module_xyz" in result["fake_missing"][1]
    assert result["fake_broken_import"][0] == "BackendUnavailable"
    assert result["nope"][0] == "UnknownBackend"
    assert "fake_length" in result["nope"][1] and "qwen3_transformers" in result["nope"][1]


def test_options_are_validated_on_load():
    result = run("""
        import json
        from reranker.core.registry import load_backend
        try:
            load_backend("fake_length", {"infer_batch_size": -3})
            print(json.dumps({"raised": None}))
        except Exception as exc:
            print(json.dumps({"raised": type(exc).__name__, "msg": str(exc)}))
    """)
    assert result["raised"] == "ValidationError" and "infer_batch_size" in result["msg"]


def test_a_backend_may_share_another_backends_venv():
    from reranker.compare.sides import shared_venv

    # "# venv: OTHER" in scripts/requirements_reranker_<backend>.txt: same packages.
    assert shared_venv("qwen3_vllm_score") == ["qwen3_vllm"]
    assert shared_venv("cross_encoder_transformers") == ["qwen3_transformers"]
    assert shared_venv("qwen3_transformers") == []
    assert shared_venv("no_such_backend") == []
