"""HTTP benchmark: this service against `vllm serve` on the same model, card and requests.

    python scripts/bench_http.py --model DIR [--backend qwen3_transformers]
        [--clients 1,4,16,64] [--docs 10,100,1000] [--levels 1x10,64x1000]
        [--requests N] [--max-seconds 60] [--check-scores] [--skip-vllm]
        [--vllm-python PY] [--vllm-arg=--FLAG ...] [--port P] [--out bench-http.json]

One server at a time, each on 127.0.0.1 (--port, default a free port):

1. this service, started with scripts/start_reranker.sh --backend B --config FILE (the
   backend's venv), FILE written to a temporary folder from the base config (--config,
   default config/config.yaml) with the model (--model), dtype, max_model_len, queue
   bounds that admit every client's request and a request timeout (request_timeout_s) no
   shorter than the client's (--request-timeout: the service would otherwise answer 429
   at once to a request its queue cannot score in time); ready when GET /ready answers
   200. Requests go to POST /rerank (Cohere v2 body: query, documents).
2. `vllm serve MODEL --runner pooling --hf-overrides '{"architectures":
   ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
   "is_original_qwen3_reranker": true}' --max-model-len L --dtype D` (the overrides vLLM
   documents for the original Qwen3-Reranker checkpoint), run by the vLLM venv's
   interpreter (--vllm-python, default .venv-reranker-qwen3_vllm/bin/python when it
   exists); ready when GET /health answers 200. Requests go to POST /score with the Qwen3
   prompt applied by the client, as this service's prompt builds it: text_1 = the query
   part (system prefix, <Instruct>, <Query>), text_2 = "<Document>: " + document + the
   assistant tail, for each document; vLLM joins them and scores
   sigmoid(logit(yes) - logit(no)), the same tokens and the same score as this service.
   Without a GPU (vLLM's CPU build) --enforce-eager is added and VLLM_CPU_KVCACHE_SPACE
   defaults to 2 (GiB).

Both get the same max_model_len (--max-model-len, default the backend's in the config)
and dtype (--dtype; auto: bfloat16 with a GPU, float32 without). Per server: wait until
ready (--start-timeout), --check-scores (one request of 16 documents to both: the
normalized scores must agree within --score-tolerance, default 1e-3 in float32 and 2e-2
in 16-bit, and the prompt tokens billed must be equal), warm-up requests (--warmup, 4
clients), then for each level (clients x documents per request; --clients x --docs, or
--levels CxD,...) that many closed-loop clients (threads, one keep-alive connection
each) send the level's requests (--requests, default max(16, 4 x clients)) until all are
sent or --max-seconds have passed (requests in flight then finish and count). Then
SIGTERM (drain), SIGKILL after 60 s, and every process the server started is waited for.

The requests are fixed (--seed): a query of its own each and documents drawn from a pool
of texts of 100 to 1250 words (log-uniform, about 540 prompt tokens per pair with the
Qwen3 tokenizer and template); both servers get identical requests. The documents fit
max_model_len 4096 whole, so neither server truncates.

Output: a Markdown table per level (pairs/s = documents scored / wall time, p50 and p99
latency of each server, ours / vllm serve ratios, failed requests by status) and --out, a
JSON file with every level's numbers, the score check, the commands, the config, and the
environment (GPUs from nvidia-smi; versions of torch, transformers and vllm in each
server's venv), rewritten after each level. Exit status 0 when both servers answered
every request sent with 200 (and the score check passed), 1 otherwise, 2 on bad arguments.
Traffic goes only to 127.0.0.1.

Latency spikes (--spikes): this service only, one client, --requests (default 50)
sequential requests for each --docs (default 10,100,1000; no time bound unless
--max-seconds); printed per document count: p50, p99, max and p99 / p50, and with
--json-out one JSON line of the same. After the warm-up requests, a request that pays for
compilation, graph capture or allocator growth shows as p99 / p50 well above 1.
    python scripts/bench_http.py --model DIR --spikes --json-out spikes.jsonl
--python PYTHON runs this service with that interpreter instead of
scripts/start_reranker.sh (an environment without the per-backend venvs).

On a CPU (tiny model, vLLM's CPU build in .venv-reranker-qwen3_vllm):
    HF_HUB_OFFLINE=1 .venv-reranker-qwen3_vllm/bin/python scripts/bench_http.py \\
        --model .cache/tiny-qwen3 --clients 1,4 --docs 10 --requests 8 --check-scores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reranker.bench.http_load import (  # noqa: E402
    MAX_WORDS,
    MIN_WORDS,
    Requests,
    Service,
    drive,
    environment,
    fmt,
    free_port,
    has_gpu,
    int_list,
    key_values,
    level_list,
    log_tail,
    queue_needs,
    run_levels,
    spawn,
    spike_rows,
    spike_table,
    stop_service,
    versions_of,
    wait_ready,
)
from reranker.config import ServerSettings  # noqa: E402
from reranker.core.options import BackendOptions  # noqa: E402
from reranker.formats.qwen3 import Qwen3PromptOptions  # noqa: E402

DEFAULT_CLIENTS = [1, 4, 16, 64]
DEFAULT_DOCS = [10, 100, 1000]
CHECK_DOCS = 16
SPIKE_REQUESTS = 50  # per document count in --spikes mode: p99 is then the worst but one
WARMUP_CLIENTS = 4
# The overrides vLLM documents for the original Qwen3-Reranker checkpoint: a sequence
# classifier whose single logit is logit(yes) - logit(no).
QWEN3_RERANKER_HF_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
PROMPT_KEYS = set(Qwen3PromptOptions.model_fields) - set(BackendOptions.model_fields)
# `vllm serve` is vLLM's CLI main. Run through `python -c` so that vLLM's CPU build, whose
# package is named vllm-cpu, can report a version (the CLI asks for "vllm"'s); the
# "+cpu" suffix is how vLLM's own platform detection spells that build's version.
VLLM_LAUNCHER = """\
import importlib.metadata as m, sys
_version = m.version
def version(name):
    try:
        return _version(name)
    except m.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"
m.version = version
from vllm.entrypoints.cli.main import main
sys.argv = ["vllm", *sys.argv[1:]]
sys.exit(main())
"""
SERVERS = ("ours", "vllm")
LABELS = {"ours": "this service", "vllm": "vllm serve"}


# ---------------------------------------------------------------- arguments


def default_vllm_python() -> str:
    venv = Path(os.environ.get("RERANK_VENV_ROOT") or ROOT) / ".venv-reranker-qwen3_vllm"
    return str(venv / "bin/python") if (venv / "bin/python").exists() else sys.executable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    ap.add_argument("--config", default=str(ROOT / "config/config.yaml"), help="base config")
    ap.add_argument("--model", help="hub id or local dir (default: the backend's in the config)")
    ap.add_argument("--backend", default="qwen3_transformers", help="this service's backend")
    ap.add_argument("--clients", type=int_list, default=DEFAULT_CLIENTS, help="(1,4,16,64)")
    ap.add_argument("--docs", type=int_list, default=DEFAULT_DOCS, help="per request (10,100,1000)")
    ap.add_argument("--levels", type=level_list, help="CxD,... instead of --clients x --docs")
    ap.add_argument("--requests", type=int, help="requests per level (max(16, 4 x clients))")
    ap.add_argument("--max-seconds", type=float, help="time bound per level (60; --spikes: none)")
    ap.add_argument("--warmup", type=int, default=8, help="warm-up requests (8, 4 clients)")
    ap.add_argument("--min-words", type=int, default=MIN_WORDS, help=f"per doc ({MIN_WORDS})")
    ap.add_argument("--max-words", type=int, default=MAX_WORDS, help=f"per doc ({MAX_WORDS})")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--max-model-len", type=int, help="both servers (the backend's: 4096)")
    ap.add_argument("--check-scores", action="store_true", help="compare one request's scores")
    ap.add_argument("--score-tolerance", type=float, help="(1e-3 float32, 2e-2 16-bit)")
    ap.add_argument("--skip-vllm", action="store_true", help="run this service only")
    ap.add_argument(
        "--python",
        help="run this service with this interpreter (python -m reranker.cli serve) "
        "instead of scripts/start_reranker.sh and the backend's venv",
    )
    ap.add_argument("--vllm-python", default=default_vllm_python(), help="the vLLM venv's python")
    ap.add_argument("--vllm-arg", action="append", default=[], metavar="ARG", help="to vllm serve")
    ap.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--server-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--port", type=int, help="port of each server in turn (default: free)")
    ap.add_argument("--start-timeout", type=float, default=900.0, help="ready wait (900 s)")
    ap.add_argument("--request-timeout", type=float, default=600.0, help="per request (600 s)")
    ap.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    ap.add_argument("--out", default="bench-http.json", help="JSON results (bench-http.json)")
    ap.add_argument("--log-dir", help="server logs (default: the folder of --out)")
    ap.add_argument(
        "--spikes", action="store_true", help="this service, 1 client, 50 requests per --docs"
    )
    ap.add_argument("--json-out", help="--spikes: append one JSON line of the spike table")
    args = ap.parse_args(argv)
    if not args.backend.startswith("qwen3_"):
        ap.error("--backend: a Qwen3-Reranker backend (qwen3_transformers, qwen3_vllm, ...)")
    if not Path(args.config).is_file():
        ap.error(f"no config file {args.config}")
    if args.requests is not None and args.requests < 1:
        ap.error("--requests must be at least 1")
    if not 1 <= args.min_words <= args.max_words:
        ap.error("--min-words must be at least 1 and at most --max-words")
    try:
        key_values(args.backend_option)
        key_values(args.server_option)
    except ValueError as exc:
        ap.error(str(exc))
    if args.check_scores and args.skip_vllm and not args.spikes:
        print(
            "note: --check-scores compares with vllm serve; with --skip-vllm no score is checked",
            file=sys.stderr,
        )
    if args.spikes:
        args.skip_vllm = True
        args.requests = args.requests or SPIKE_REQUESTS
        args.levels = args.levels or [(1, d) for d in args.docs]
        if args.max_seconds is None:
            args.max_seconds = 86400.0  # every request is sent
    elif args.json_out:
        ap.error("--json-out goes with --spikes (--out has the full results)")
    if args.max_seconds is None:
        args.max_seconds = 60.0
    if args.levels is None:
        args.levels = [(c, d) for d in args.docs for c in args.clients]
    return args


# ---------------------------------------------------------------- config and requests


def resolved_dtype(name: str) -> str:
    if name != "auto":
        return name
    return "bfloat16" if has_gpu() else "float32"


def service_config(
    base: dict[str, Any], args: argparse.Namespace, port: int, needs: dict[str, int]
) -> dict[str, Any]:
    """The base config with the backend, model, dtype, max_model_len, host and port, and
    queue bounds at least ``needs``."""
    config = copy.deepcopy(base) or {}
    rerank = config.setdefault("services", {}).setdefault("rerank", {})
    rerank["backend"] = args.backend
    rerank.pop("scale", None)
    backends = rerank.setdefault("backends", {}) or {}
    rerank["backends"] = backends
    options = backends.get(args.backend) or {}
    backends[args.backend] = options
    options["model_name"] = args.model_name
    options["max_model_len"] = args.max_model_len
    options["dtype"] = args.resolved_dtype
    options.update(key_values(args.backend_option))
    server = rerank.setdefault("server", {}) or {}
    rerank["server"] = server
    server.update({"host": "127.0.0.1", "port": port})
    for key, need in needs.items():  # closed-loop clients must all be admitted
        current = server.get(key, ServerSettings.model_fields[key].default)
        if int(current) < need:
            server[key] = need
    # the service answers 429 at once when its queue would outlast a request's timeout;
    # vllm serve has none: give each request as long as the client waits for it
    default_timeout = ServerSettings.model_fields["request_timeout_s"].default
    timeout = float(server.get("request_timeout_s", default_timeout))
    server["request_timeout_s"] = max(timeout, float(args.request_timeout))
    server.update(key_values(args.server_option))
    return config


def prompt_options(options: dict[str, Any]) -> Qwen3PromptOptions:
    """The backend's prompt options (instruction, layout) from its config section."""
    return Qwen3PromptOptions(**{k: v for k, v in options.items() if k in PROMPT_KEYS})


def vllm_body(body: dict[str, Any], prompt: Qwen3PromptOptions) -> dict[str, Any]:
    """A /rerank body as vLLM /score text pairs with the Qwen3 prompt applied: the query
    part, and each document between the document template's lead and tail."""
    template = prompt.prompt_template()
    lead, tail = template.document_lead_and_tail()
    return {
        "text_1": template.query_text(body["query"], prompt.instruction),
        "text_2": [lead + d + tail for d in body["documents"]],
    }


def longest_prompt(model: str, prompt: Qwen3PromptOptions, requests: Requests) -> int | None:
    """Prompt tokens of the workload's longest pairs (longest query, longest documents by
    characters), with the model's tokenizer; None where it cannot be loaded here."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception:  # no transformers here, or the model is not reachable: unchecked
        return None
    query = max(requests.queries, key=len)
    docs = sorted(requests.pool, key=len)[-20:]
    pair = vllm_body({"query": query, "documents": docs}, prompt)
    texts = [pair["text_1"] + d for d in pair["text_2"]]
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- servers


def start_ours(args: argparse.Namespace, config_path: Path, port: int, log: Path) -> Service:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RERANK_CONFIG", "RERANK_MODEL", "RERANK_BACKEND"):
        env.pop(key, None)
    if args.python:
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
        command = [args.python, "-m", "reranker.cli", "serve", "--backend", args.backend]
    else:
        command = ["bash", str(ROOT / "scripts/start_reranker.sh"), "--backend", args.backend]
    command += ["--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    return spawn(command, f"http://127.0.0.1:{port}", log, env)


def vllm_serve_args(args: argparse.Namespace, port: int) -> list[str]:
    """The arguments of `vllm serve`."""
    out = [
        "serve",
        args.model_name,
        "--runner",
        "pooling",
        "--hf-overrides",
        json.dumps(QWEN3_RERANKER_HF_OVERRIDES),
        "--max-model-len",
        str(args.max_model_len),
        "--dtype",
        args.resolved_dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-uvicorn-access-log",
    ]
    if not has_gpu() and "--enforce-eager" not in args.vllm_arg:
        out.append("--enforce-eager")  # vLLM's CPU build: no compile step at start
    return out + list(args.vllm_arg)


def start_vllm(args: argparse.Namespace, port: int, log: Path) -> Service:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not has_gpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on vLLM's CPU build
    command = [args.vllm_python, "-c", VLLM_LAUNCHER, *vllm_serve_args(args, port)]
    return spawn(command, f"http://127.0.0.1:{port}", log, env)


def service_venv_python(log: Path) -> str | None:
    """The interpreter start_reranker.sh chose (its first line names the venv)."""
    m = re.search(r"\[start\] backend=\S+ venv=(\S+)", log_tail(log, 400))
    return str(Path(m.group(1)) / "bin/python") if m else None


def scores_of(name: str, answer: dict[str, Any]) -> list[float]:
    """Scores in document order from a /rerank (ours) or /score (vLLM) answer."""
    items = answer["results"] if name == "ours" else answer["data"]
    key = "relevance_score" if name == "ours" else "score"
    scores = [float("nan")] * len(items)
    for item in items:
        scores[int(item["index"])] = float(item[key])
    return scores


def check_request(name: str, service: Service, body: dict[str, Any], timeout: float) -> dict:
    route = "/rerank" if name == "ours" else "/score"
    if name == "ours":
        body = {**body, "top_n": len(body["documents"])}
    r = httpx.post(f"{service.url}{route}", json=body, timeout=timeout)
    out: dict[str, Any] = {"route": route, "status": r.status_code}
    if r.status_code != 200:
        out["error"] = r.text[:500]
        return out
    answer = r.json()
    out["scores"] = scores_of(name, answer)
    out["prompt_tokens"] = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    return out


def run_server(
    name: str,
    args: argparse.Namespace,
    by_level: list[tuple[int, int, list[dict[str, Any]]]],
    warmup: list[dict[str, Any]],
    check: dict[str, Any] | None,
    folder: Path,
    log_dir: Path,
    on_level: Any,
) -> dict[str, Any]:
    port = args.port or free_port()
    log_path = log_dir / f"{Path(args.out).stem}.{name}.log"
    result: dict[str, Any] = {"server": name, "log": str(log_path), "levels": []}
    result["status"] = "starting"
    route = "/rerank" if name == "ours" else "/score"
    if name == "ours":
        config = service_config(args.base_config, args, port, queue_needs(by_level))
        config_path = folder / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        result.update(backend=args.backend, config=config)
        service = start_ours(args, config_path, port, log_path)
        ready_route = "/ready"
    else:
        result["command"] = shlex.join(["vllm", *vllm_serve_args(args, port)])
        result["python"] = args.vllm_python
        service = start_vllm(args, port, log_path)
        ready_route = "/health"
    print(f"== {LABELS[name]}: starting (log {log_path})", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        why = wait_ready(service, args.start_timeout, ready_route)
        result["startup_s"] = round(time.monotonic() - started, 1)
        if why:
            result.update(status="failed", error=why)
            return result
        print(f"== {LABELS[name]}: ready in {result['startup_s']} s", file=sys.stderr, flush=True)
        python = args.vllm_python if name == "vllm" else service_venv_python(log_path)
        result["versions"] = versions_of(python) if python else {}
        if check is not None:
            result["check"] = check_request(name, service, check, args.request_timeout)
        outcomes, _, _ = drive(
            service.url, warmup, WARMUP_CLIENTS, args.max_seconds, args.request_timeout, route
        )
        result["warmup"] = dict(Counter(str(o.status) for o in outcomes))
        if warmup and not any(o.status == 200 for o in outcomes):
            result.update(
                status="failed", error=f"every warm-up request failed: {result['warmup']}"
            )
            return result
        if not run_levels(
            service, by_level, args.max_seconds, args.request_timeout, result, on_level, route
        ):
            return result
        result["status"] = "ok"
        return result
    finally:
        result["stop"] = stop_service(service)
        if result["status"] != "ok":
            result["log_tail"] = log_tail(log_path)
            print(
                f"== {LABELS[name]} FAILED: {result.get('error')}\n--- {log_path} (tail)\n"
                f"{result['log_tail']}\n---",
                file=sys.stderr,
                flush=True,
            )


# ---------------------------------------------------------------- comparison and report


def score_check(servers: dict[str, dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Both servers' scores of the check request: equal within ``tolerance``, and the same
    prompt tokens billed (the same tokens scored)."""
    ours, vllm = (servers.get(n, {}).get("check") for n in SERVERS)
    out: dict[str, Any] = {"tolerance": tolerance, "passed": False}
    if not ours or not vllm:
        out["error"] = "a server did not answer the check request"
        return out
    if ours["status"] != 200 or vllm["status"] != 200:
        out["error"] = f"status {ours['status']} (ours), {vllm['status']} (vllm serve)"
        return out
    a, b = ours["scores"], vllm["scores"]
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)] if len(a) == len(b) else []
    out.update(
        documents=len(a),
        max_abs_diff=max(diffs) if diffs else None,
        prompt_tokens={"ours": ours["prompt_tokens"], "vllm": vllm["prompt_tokens"]},
        same_tokens=ours["prompt_tokens"] == vllm["prompt_tokens"],
    )
    out["passed"] = bool(diffs) and max(diffs) <= tolerance and out["same_tokens"]
    return out


def comparison(servers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: both servers' numbers and the ours / vllm serve ratios."""
    by_key = {
        name: {(lv["clients"], lv["docs"]): lv for lv in s.get("levels", [])}
        for name, s in servers.items()
    }
    keys = list(dict.fromkeys(k for levels in by_key.values() for k in levels))

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    rows = []
    for key in keys:
        ours, vllm = by_key.get("ours", {}).get(key), by_key.get("vllm", {}).get(key)
        row: dict[str, Any] = {"clients": key[0], "docs": key[1]}
        for metric in ("pairs_per_s", "p50_ms", "p99_ms"):
            a = ours[metric] if ours else None
            b = vllm[metric] if vllm else None
            row[metric] = {"ours": a, "vllm": b, "ratio": ratio(a, b)}
        row["failed"] = {
            "ours": failures(ours) if ours else None,
            "vllm": failures(vllm) if vllm else None,
        }
        rows.append(row)
    return rows


def failures(level: dict[str, Any]) -> str:
    """``0``, or the failed count with the statuses (``3 (503: 2, ReadTimeout: 1)``)."""
    bad = {k: v for k, v in level["statuses"].items() if k != "200"}
    text = str(level["failed"])
    if bad:
        text += " (" + ", ".join(f"{k}: {v}" for k, v in bad.items()) + ")"
    if level.get("requests_unsent"):
        text += f", {level['requests_unsent']} unsent"
    return text


def report(result: dict[str, Any]) -> str:
    rows = [
        "| clients | docs | pairs/s ours | pairs/s vllm serve | ratio | p50 ms ours "
        "| p50 ms vllm serve | ratio | p99 ms ours | p99 ms vllm serve | ratio | failed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result.get("comparison", []):
        cells = [str(row["clients"]), str(row["docs"])]
        for metric in ("pairs_per_s", "p50_ms", "p99_ms"):
            m = row[metric]
            r = m["ratio"]
            cells += [fmt(m["ours"]), fmt(m["vllm"]), "-" if r is None else f"{r:.2f}x"]
        f = row["failed"]
        cells.append(
            f"{f['ours'] if f['ours'] is not None else '-'} / "
            f"{f['vllm'] if f['vllm'] is not None else '-'}"
        )
        rows.append("| " + " | ".join(cells) + " |")
    for name, s in result["servers"].items():
        if s.get("status") != "ok":
            why = str(s.get("error", s.get("status"))).replace("|", "/")[:200]
            rows.append(f"\n{LABELS[name]}: {why}")
    rows.append("\nratio: this service / vllm serve (pairs/s: above 1 is faster; latency: below 1)")
    check = result.get("score_check")
    if check:
        if "max_abs_diff" in check:
            rows.append(
                f"score check: {check['documents']} documents, max |ours - vllm serve| = "
                f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:g}), prompt tokens "
                f"{check['prompt_tokens']['ours']} / {check['prompt_tokens']['vllm']}: "
                + ("passed" if check["passed"] else "FAILED")
            )
        else:
            rows.append(f"score check FAILED: {check.get('error')}")
    env = result.get("environment", {})
    gpus = "; ".join(env.get("gpus", [])) or "no GPU"
    versions = {**result["servers"].get("ours", {}).get("versions", {})}
    vllm_versions = result["servers"].get("vllm", {}).get("versions", {})
    for name in ("vllm", "vllm-cpu"):
        if name in vllm_versions:
            versions[name] = vllm_versions[name]
    wl = result.get("workload", {})
    args = result.get("args", {})
    rows.append(
        f"{gpus}; backend {args.get('backend')}, {args.get('dtype')}, max_model_len "
        f"{args.get('max_model_len')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; workload seed {wl.get('seed')}, {wl.get('min_words')}-{wl.get('max_words')} words"
        " per document"
    )
    return "\n".join(rows)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = yaml.safe_load(Path(args.config).read_text()) or {}
    args.base_config = base
    options = ((base.get("services") or {}).get("rerank") or {}).get("backends") or {}
    options = dict(options.get(args.backend) or {})
    model = args.model or options.get("model_name") or "Qwen/Qwen3-Reranker-0.6B"
    args.model_name = str(Path(model).resolve()) if Path(model).exists() else model
    args.max_model_len = args.max_model_len or int(options.get("max_model_len") or 4096)
    args.resolved_dtype = resolved_dtype(args.dtype)
    tolerance = args.score_tolerance
    if tolerance is None:
        tolerance = 1e-3 if args.resolved_dtype == "float32" else 2e-2
    options.update(key_values(args.backend_option))
    prompt = prompt_options(options)

    out_path = Path(args.out).resolve()
    log_dir = Path(args.log_dir).resolve() if args.log_dir else out_path.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    levels: list[tuple[int, int]] = args.levels
    counts = [args.requests or max(16, 4 * c) for c, _ in levels]
    max_docs = max([d for _, d in levels] or [CHECK_DOCS])
    total = 1 + args.warmup + sum(counts)
    requests = Requests(args.seed, max_docs, total, args.min_words, args.max_words)
    longest = longest_prompt(args.model_name, prompt, requests)
    if longest is not None and longest > args.max_model_len:
        print(
            f"error: the longest prompts of this workload take {longest} tokens, more than "
            f"max_model_len {args.max_model_len}: vllm serve would refuse them (this service "
            "truncates); lower --max-words or raise --max-model-len",
            file=sys.stderr,
        )
        return 2
    check = requests.take(1, CHECK_DOCS)[0] if args.check_scores else None
    warmup = requests.take(args.warmup, max_docs)
    by_level = [(c, d, requests.take(n, d)) for (c, d), n in zip(levels, counts, strict=True)]
    # vLLM gets the same requests as /score text pairs, the prompt applied beforehand.
    as_vllm = {
        "vllm": (
            [(c, d, [vllm_body(b, prompt) for b in bodies]) for c, d, bodies in by_level],
            [vllm_body(b, prompt) for b in warmup],
            vllm_body(check, prompt) if check else None,
        )
    }

    result: dict[str, Any] = {
        "environment": environment(),
        "args": {
            **{k: v for k, v in vars(args).items() if k not in ("base_config", "levels")},
            "levels": [f"{c}x{d}" for c, d in levels],
            "model": args.model_name,
            "dtype": args.resolved_dtype,
            "score_tolerance": tolerance,
        },
        "workload": {
            "seed": args.seed,
            "min_words": args.min_words,
            "max_words": args.max_words,
            "longest_prompt_tokens": longest,
            "pool_docs": len(requests.pool),
            "warmup_requests": args.warmup,
            "check_docs": CHECK_DOCS if check else 0,
            "levels": [
                {"clients": c, "docs": d, "requests": n}
                for (c, d), n in zip(levels, counts, strict=True)
            ],
        },
        "prompt": {"instruction": prompt.instruction, "format": prompt.instruction_format},
        "servers": {},
    }
    for key in ("resolved_dtype", "model_name"):
        result["args"].pop(key, None)

    def save() -> None:
        result["comparison"] = comparison(result["servers"])
        if check is not None and not args.skip_vllm:
            result["score_check"] = score_check(result["servers"], tolerance)
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out_path)

    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for name in SERVERS:
            if name == "vllm" and args.skip_vllm:
                continue
            result["servers"][name] = {"server": name, "status": "starting"}

            def on_level(partial: dict[str, Any], name: str = name) -> None:
                result["servers"][name] = partial
                save()

            sent = (by_level, warmup, check) if name == "ours" else as_vllm[name]
            try:
                done = run_server(name, args, *sent, Path(tmp), log_dir, on_level)
            except KeyboardInterrupt:
                result["servers"][name]["status"] = "interrupted"
                save()
                raise
            result["servers"][name] = done
            failed |= done["status"] != "ok"
            failed |= any(lv["failed"] for lv in done["levels"])
            save()
    print(report(result))
    ours = result["servers"].get("ours", {})
    if args.spikes:
        rows = spike_rows(ours.get("levels", []))
        print("\nlatency spikes (this service, one client):\n" + spike_table(rows))
        if args.json_out:
            record = {
                "bench": "http_spikes",
                "model": args.model_name,
                "backend": args.backend,
                "dtype": args.resolved_dtype,
                "levels": rows,
                "startup_s": ours.get("startup_s"),
                "environment": result["environment"],
            }
            with open(args.json_out, "a") as out:
                out.write(json.dumps(record) + "\n")
    print(f"\nJSON: {out_path}", file=sys.stderr)
    if result.get("score_check") and not result["score_check"]["passed"]:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
