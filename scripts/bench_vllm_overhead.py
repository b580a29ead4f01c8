"""What ``qwen3_vllm`` adds to a plain ``LLM.generate`` on the same engine and prompts.

    python scripts/bench_vllm_overhead.py --model DIR [--queries 4] [--docs 250]
        [--min-words 100] [--max-words 1250] [--repeat 3] [--raw-logprobs 20]
        [--max-model-len 4096] [--dtype auto] [--backend-option KEY=VALUE ...]
        [--stream-docs N] [--stream-head-docs N] [--json-out FILE]

One ``qwen3_vllm`` backend is started (its options from --backend-option; on a CPU,
eager and float32). On one workload (``reranker bench``'s: --queries queries of --docs
documents each), each repeat times, in turn:

- raw: ``llm.generate`` on the backend's own engine with every prompt's token ids
  (``TokensPrompt``, tokenised beforehand, outside the clock) and
  ``SamplingParams(max_tokens=1, temperature=0, logprobs=--raw-logprobs)``, what a user
  would write: per query (one call each) and in one call;
- ours: the backend scoring the texts (tokenising included): per query
  (``score_with_meta``) and coalesced (``score_requests``, one call).

The four forms take turns, once each a repeat, after one untimed run of each.
--stream-docs and --stream-head-docs set how the backend streams a call's documents to
the engine (documents a chunk; a first chunk of N documents sent alone, where the call's
first query has more than 2N), to compare settings on one card; a backend that does not
stream (several engines) refuses them.

Printed: pairs/s of each (best of --repeat) and ours / raw for each form; --json-out
appends the same as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reranker.bench.http_load import environment, has_gpu, key_values  # noqa: E402
from reranker.bench.workload import Workload, make_workload  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="hub id or local dir")
    ap.add_argument("--queries", type=int, default=4, help="queries (4)")
    ap.add_argument("--docs", type=int, default=250, help="documents per query (250)")
    ap.add_argument("--min-words", type=int, default=100, help="per document (100)")
    ap.add_argument("--max-words", type=int, default=1250, help="per document (1250)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (3)")
    ap.add_argument("--raw-logprobs", type=int, default=20, help="raw's top-k logprobs (20)")
    ap.add_argument("--max-model-len", type=int, default=4096, help="(4096)")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    ap.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--stream-docs", type=int, help="documents a streamed chunk (the backend's: 32)"
    )
    ap.add_argument(
        "--stream-head-docs",
        type=int,
        help="documents of a first chunk sent alone (the backend's: 0, none)",
    )
    ap.add_argument("--json-out", help="append the result as one JSON line")
    args = ap.parse_args(argv)
    if args.stream_docs is not None and args.stream_docs < 1:
        ap.error("--stream-docs must be at least 1")
    if args.stream_head_docs is not None and args.stream_head_docs < 0:
        ap.error("--stream-head-docs must be at least 0")
    if args.stream_head_docs and args.docs <= 2 * args.stream_head_docs:
        ap.error("--stream-head-docs N needs --docs above 2N: no first chunk is split off")
    if min(args.queries, args.docs, args.repeat, args.min_words) < 1:
        ap.error("--queries, --docs, --repeat and --min-words must be at least 1")
    if args.max_words < args.min_words:
        ap.error("--max-words must be at least --min-words")
    return args


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The qwen3_vllm options: model, length, dtype; eager on a CPU; then the user's."""
    gpu = has_gpu()
    options: dict[str, Any] = {
        "model_name": args.model,
        "max_model_len": args.max_model_len,
        "dtype": args.dtype if args.dtype != "auto" else ("bfloat16" if gpu else "float32"),
    }
    if not gpu:
        options["enforce_eager"] = True
    options.update(key_values(args.backend_option))
    return options


def token_prompts(backend: Any, workload: Workload) -> list[list[Any]]:
    """Each query's prompts as ``TokensPrompt`` s, tokenised by the backend's encoder."""
    from vllm.inputs import TokensPrompt

    instruction = backend.options.instruction
    out = []
    for query, docs in zip(workload.queries, workload.docs, strict=True):
        encoded = backend._encoder.encode(query, docs, instruction)
        out.append([TokensPrompt(prompt_token_ids=encoded.prompt_ids(k)) for k in range(len(docs))])
    return out


def best_rates(
    pairs: int, repeat: int, forms: dict[str, Any], clock: Any = time.perf_counter
) -> dict[str, float]:
    """Pairs a second of the fastest of ``repeat`` runs of each form. The forms take
    turns (each repeat runs every form once), so that a drift of the card's clocks or of
    the host's load over the run weighs on every form alike. ``clock``: seconds."""
    best = dict.fromkeys(forms, float("inf"))
    for _ in range(repeat):
        for name, run in forms.items():
            started = clock()
            run()
            best[name] = min(best[name], clock() - started)
    return {name: round(pairs / seconds, 2) for name, seconds in best.items()}


def measure(backend: Any, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """Pairs/s of raw generate and of the backend, per query and in one call."""
    from vllm import SamplingParams

    from reranker.core.protocol import ScoreRequest

    llm = backend._llm
    prompts = token_prompts(backend, workload)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=args.raw_logprobs)
    queries = list(zip(workload.queries, workload.docs, strict=True))
    requests = [ScoreRequest(q, d) for q, d in queries]
    forms = {
        "raw_per_query": lambda: [llm.generate(p, params, use_tqdm=False) for p in prompts],
        "raw_one_call": lambda: llm.generate(
            [p for per_query in prompts for p in per_query], params, use_tqdm=False
        ),
        "ours_per_query": lambda: [backend.score_with_meta(q, d) for q, d in queries],
        "ours_one_call": lambda: backend.score_requests(requests),
    }
    for run in forms.values():  # warm-up: every form once, untimed
        run()
    rates = best_rates(workload.pairs, args.repeat, forms)
    return {
        "pairs_per_s": rates,
        "ratio_per_query": round(rates["ours_per_query"] / rates["raw_per_query"], 3),
        "ratio_one_call": round(rates["ours_one_call"] / rates["raw_one_call"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Start the backend, measure, print; 0 on success."""
    args = parse_args(argv)
    from reranker.core.registry import load_backend

    workload = make_workload(args.queries, args.docs, args.min_words, args.max_words, args.seed)
    options = backend_options(args)
    backend = load_backend("qwen3_vllm", options)
    settings = {
        name: value
        for name, value in (
            ("stream_docs", args.stream_docs),
            ("stream_head_docs", args.stream_head_docs),
        )
        if value is not None
    }
    streamed = backend.streams()
    if settings and not streamed:
        backend.close()
        print(
            "error: --stream-docs / --stream-head-docs: this backend does not stream its "
            "calls (several engines, or a vLLM without LLMEngine.add_request)",
            file=sys.stderr,
        )
        return 2
    for name, value in settings.items():
        setattr(backend, name, value)
    try:
        result = measure(backend, workload, args)
        meta = backend.meta_extra()
    finally:
        backend.close()
    record = {
        "bench": "vllm_overhead",
        "model": args.model,
        "queries": args.queries,
        "docs": args.docs,
        "pairs": workload.pairs,
        "repeat": args.repeat,
        "raw_logprobs": args.raw_logprobs,
        "options": options,
        "streamed": streamed,
        "stream_docs": backend.stream_docs,
        "stream_head_docs": backend.stream_head_docs,
        "backend": meta,
        **result,
        "environment": environment(),
    }
    rates = result["pairs_per_s"]
    print(f"{'form':<12} {'raw pairs/s':>12} {'qwen3_vllm pairs/s':>19} {'ratio':>7}")
    for form in ("per_query", "one_call"):
        raw, ours = rates[f"raw_{form}"], rates[f"ours_{form}"]
        print(f"{form:<12} {raw:>12.2f} {ours:>19.2f} {result[f'ratio_{form}']:>7.3f}")
    if args.json_out:
        with open(args.json_out, "a") as out:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
