"""Scores for ``reranker compare`` from one backend, run inside that backend's venv.

Protocol: after loading, one line ``{"ready": true}`` (or ``{"error": ...}``) on the
protocol stream; then for each stdin line ``{"query", "docs"}`` one line
``{"scores": [...], "meta": {...}}`` or ``{"error": "...", "type": "<exception class>"}``.
Everything else the libraries print goes to stderr, so the protocol stream stays clean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": str(exc), "type": type(exc).__name__}


def main(argv: list[str] | None = None) -> int:
    """Run the worker loop."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # library output (vLLM, tqdm) must not corrupt the protocol
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--config")
    parser.add_argument("--options", default="{}", help="JSON backend options (override)")
    args = parser.parse_args(argv)
    try:
        from reranker.config import load_settings, resolve_backend_options
        from reranker.core.registry import load_backend

        settings = load_settings(args.config)
        cls, options = resolve_backend_options(settings, args.backend)
        merged = {**options.model_dump(exclude_unset=True), **json.loads(args.options)}
        backend = load_backend(cls.name, cls.Options.model_validate(merged))
    except Exception as exc:
        proto.write(json.dumps(_error(exc)) + "\n")
        return 2
    proto.write(json.dumps({"ready": True, "model": backend.model_name}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            scores, meta = backend.score_with_meta(req["query"], req["docs"])
            proto.write(json.dumps({"scores": scores, "meta": meta.to_dict()}) + "\n")
        except Exception as exc:
            proto.write(json.dumps(_error(exc)) + "\n")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
