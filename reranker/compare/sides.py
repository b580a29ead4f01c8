"""The two sides of a comparison: a backend in its own venv (subprocess) or a running URL.

SPEC syntax: ``http://host:port`` (a running service; its ``/v1/score_with_meta`` is used)
or ``NAME[:key=value,key=value...]`` where NAME is a backend and the keys are its options,
plus ``config=PATH`` (config file), ``venv=PATH`` or ``python=PATH`` (interpreter to run it
with; default ``.venv-reranker-NAME`` when it exists, else this interpreter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reranker.core.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidRequest,
    ModelUnavailable,
    RerankerError,
)


@dataclass
class SideSpec:
    """A parsed SPEC."""

    text: str
    url: str | None = None
    backend: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    python: str | None = None

    @property
    def label(self) -> str:
        """Short name for reports."""
        return self.url or self.text


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_spec(text: str) -> SideSpec:
    """Parse ``http(s)://...`` or ``NAME[:k=v,...]``; a malformed SPEC is InvalidRequest."""
    if text.startswith(("http://", "https://")):
        return SideSpec(text, url=text.rstrip("/"))
    name, _, rest = text.partition(":")
    if not name:
        raise InvalidRequest(f"bad SPEC {text!r}: expected NAME[:key=value,...] or a URL")
    spec = SideSpec(text, backend=name)
    for part in filter(None, rest.split(",")):
        key, sep, raw = part.partition("=")
        if not sep:
            raise InvalidRequest(f"bad SPEC part {part!r} in {text!r}: expected key=value")
        if key == "config":
            spec.config = raw
        elif key in ("venv", "python"):
            spec.python = str(Path(raw) / "bin" / "python") if key == "venv" else raw
        else:
            spec.options[key] = _value(raw)
    return spec


def shared_venv(backend: str) -> list[str]:
    """The backend whose venv also serves ``backend`` (its requirements file's
    ``# venv: OTHER`` line), if any."""
    requirements = Path(__file__).parents[2] / "scripts" / f"requirements_reranker_{backend}.txt"
    try:
        lines = requirements.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        if line.startswith("# venv: ") and line[8:].split():
            return [line[8:].split()[0]]
    return []


def default_python(backend: str) -> str:
    """The backend's venv interpreter if it exists, else the current one."""
    root = Path(os.environ.get("RERANK_VENV_ROOT", "."))
    names = [backend, *shared_venv(backend)]
    for name in names:
        candidate = root / f".venv-reranker-{name}" / "bin" / "python"
        if candidate.is_file():
            return str(candidate.absolute())
    return sys.executable


RUNTIME_KEYS = ("model", "backend", "device", "dtype")


def _start_error(backend: str, reply: dict[str, Any]) -> RerankerError:
    """The typed error a worker's failed start stands for."""
    kind, message = reply.get("type"), str(reply["error"])
    if kind == "ModelUnavailable":
        return ModelUnavailable(message)
    if kind == "ConfigError":
        return ConfigError(message)
    if kind in ("BackendUnavailable", "UnknownBackend"):
        return RerankerError(message)  # the message already names the fix
    return BackendUnavailable(backend, f"its worker failed to start: {kind}: {message}")


class Side:
    """Scores (query, docs) lists for one SPEC and times each call."""

    def __init__(self, spec: SideSpec, timeout: float = 600.0) -> None:
        self.spec = spec
        self.timeout = timeout
        self.latencies_s: list[float] = []
        self.pairs = 0
        self._proc: subprocess.Popen[str] | None = None
        self.model = ""
        # What served the scores, from each response's meta: model, backend, device, dtype.
        self.runtime: dict[str, Any] = {}
        if spec.backend:
            self._start_worker()

    def _start_worker(self) -> None:
        spec = self.spec
        assert spec.backend
        cmd = [
            spec.python or default_python(spec.backend),
            "-m",
            "reranker.compare.worker",
            "--backend",
            spec.backend,
            "--options",
            json.dumps(spec.options),
        ]
        if spec.config:
            cmd += ["--config", spec.config]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if os.environ.get("RERANK_COMPARE_QUIET") else None,
            text=True,
            bufsize=1,
        )
        reply = self._read()
        if "error" in reply:
            self.close()
            raise _start_error(spec.backend, reply)
        self.model = reply.get("model", "")

    def _read(self) -> dict[str, Any]:
        assert self._proc and self._proc.stdout
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait(10)
            return {"error": f"worker exited with status {code}"}
        return json.loads(line)

    def score(self, query: str, docs: list[str]) -> list[float]:
        """Scores of ``docs`` (normalised, input order)."""
        start = time.perf_counter()
        if self.spec.url:
            import httpx

            headers = {}
            if os.environ.get("RERANK_API_KEY"):
                headers["authorization"] = f"Bearer {os.environ['RERANK_API_KEY']}"
            r = httpx.post(
                f"{self.spec.url}/v1/score_with_meta",
                headers=headers,
                json={"query": query, "docs": docs},
                timeout=self.timeout,
            )
            if r.status_code != 200:
                raise RuntimeError(f"{self.spec.url} answered {r.status_code}: {r.text[:300]}")
            reply = r.json()
        else:
            assert self._proc and self._proc.stdin
            self._proc.stdin.write(json.dumps({"query": query, "docs": docs}) + "\n")
            self._proc.stdin.flush()
            reply = self._read()
            if "error" in reply:
                raise RuntimeError(f"{self.spec.label}: {reply['error']}")
        scores = reply["scores"]
        meta = reply.get("meta") or {}
        self.runtime = {k: meta.get(k) for k in RUNTIME_KEYS}
        self.model = meta.get("model") or self.model
        self.latencies_s.append(time.perf_counter() - start)
        self.pairs += len(docs)
        return [float(s) for s in scores]

    def close(self) -> None:
        """Stop the worker, if any."""
        if self._proc:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(120)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
