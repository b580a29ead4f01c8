"""``reranker`` command line: backends | score | bench | compare | serve | build-test-model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from reranker.core.errors import ConfigError, RerankerError


def _backend_from_args(args: argparse.Namespace, check: Callable[[str], None] | None = None) -> Any:
    """The backend the arguments and config name, loaded; ``check(name)`` runs first."""
    import os

    from reranker.config import load_settings, resolve_backend_options

    env = dict(os.environ)
    if args.model:
        env["RERANK_MODEL"] = args.model
    settings = load_settings(args.config, env=env)
    cls, options = resolve_backend_options(settings, args.backend, env=env)
    for item in args.option or []:
        key, _, value = item.partition("=")
        setattr(options, key, json.loads(value) if value[:1] in "[{" else value)
    if check is not None:
        check(cls.name)
    from reranker.core.registry import load_backend

    return load_backend(cls.name, options)


def _cmd_backends(args: argparse.Namespace) -> int:
    from reranker.core.registry import list_backends

    for info in list_backends():
        state = "ok" if info.importable else f"unavailable ({info.error or info.missing})"
        print(f"{info.name:20s} {state}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    docs = args.doc or [line.rstrip("\n") for line in sys.stdin]
    with _backend_from_args(args) as backend:
        scores, meta = backend.score_with_meta(args.query, docs, normalize=not args.raw)
    print(json.dumps({"scores": scores, "meta": meta.to_dict()}, ensure_ascii=False, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from reranker.bench.runner import format_result, run_baseline, run_bench
    from reranker.bench.workload import make_workload

    if args.model_shapes:
        from reranker.bench.sizes import run_sizes

        return run_sizes(args)

    workload = make_workload(args.queries, args.docs, args.min_words, args.max_words, args.seed)
    results = []
    started = time.perf_counter()
    check = _check_baseline if args.baseline else None
    with _backend_from_args(args, check) as backend:
        startup_s = round(time.perf_counter() - started, 1)  # model load, compile, engine
        _announce_bench(args, backend, startup_s)
        results.append(run_bench(backend, workload, args.repeat, args.warmup))
        results[-1]["startup_s"] = startup_s
        print(format_result(results[-1]), flush=True)
        # each phase on documents of its own: none replays what an earlier one cached
        if args.coalesce:
            print("timing all queries in one call (coalesced) ...", file=sys.stderr, flush=True)
            results.append(
                run_bench(backend, workload, args.repeat, 0, coalesce=True, first=args.repeat)
            )
            print(format_result(results[-1]), flush=True)
        if args.baseline:
            print("timing the raw counterpart ...", file=sys.stderr, flush=True)
            baseline = run_baseline(backend, workload, args.repeat, first=2 * args.repeat)
            if baseline:
                results.append(baseline)
                print(format_result(baseline), flush=True)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
    return 0


def _check_baseline(backend_name: str) -> None:
    """Stop before anything is loaded or timed when the baseline's library is missing."""
    from reranker.bench.baselines import missing_modules

    missing = missing_modules(backend_name)
    if missing:
        packages = " ".join(m.replace("_", "-") for m in missing)
        raise RerankerError(
            f"the --baseline of {backend_name} needs {', '.join(missing)}, missing from this "
            f"environment ({sys.prefix}): pip install {packages}"
        )


# A CPU runs a 0.6B reranker at a few pairs a second: sizes that finish in about a minute.
CPU_BENCH_SIZES = "--queries 2 --docs 16 --max-words 200 --repeat 1"


def _announce_bench(args: argparse.Namespace, backend: Any, startup_s: float) -> None:
    """Say what is about to be timed (a phase can take minutes), with sizes for a CPU."""
    device = str(backend.meta_extra().get("device") or "?")
    pairs = args.queries * args.docs
    print(
        f"{backend.name} ready in {startup_s} s on {device}: timing {args.warmup} warm-up + "
        f"{args.repeat} runs of {pairs} pairs ({args.min_words}-{args.max_words} words a "
        "document) ...",
        file=sys.stderr,
        flush=True,
    )
    if device.startswith("cpu") and pairs * args.max_words > 20_000:
        print(
            f"note: on a CPU these sizes take minutes per run; for a quick look: "
            f"reranker bench {CPU_BENCH_SIZES}",
            file=sys.stderr,
            flush=True,
        )


def _start_side(label: str, spec: str) -> Any:
    """Start one side of a comparison, saying so: a vLLM engine takes a minute or more."""
    from reranker.compare.sides import Side, parse_spec

    print(f"starting side {label}: {spec} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    side = Side(parse_spec(spec))
    print(f"side {label} ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return side


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    _require_modules("compare", COMPARE_MODULES)
    from reranker.compare.data import load_items
    from reranker.compare.report import run_comparison, threshold_failures, write_report

    items = load_items(args.data, args.run, args.qrels, args.depth)
    if args.limit:
        items = items[: args.limit]
    if not items:
        print("error: no queries to compare", file=sys.stderr)
        return 2
    a = _start_side("A", args.a)
    try:
        b = _start_side("B", args.b)
    except Exception:
        a.close()
        raise
    try:
        report = run_comparison(items, a, b, progress=not args.no_progress)
    finally:
        a.close()
        b.close()
    out = Path(args.out)
    write_report(report, items, out)
    for side in ("a", "b"):
        facts = ", ".join(f"{k} {v}" for k, v in report[side].items() if k != "spec" and v)
        print(f"{side.upper()}: {report[side]['spec']} ({facts})")
    o = report["overall"]
    print(
        f"spearman {o['spearman']:.4f} (min {o['min_spearman']:.4f}), top-10 overlap "
        f"{o['top10_overlap']:.3f}, max |diff| {o['max_abs_diff']:.2e}; report: {out}/report.md"
    )
    if "quality" in report:
        nd = report["quality"]["mean"]["ndcg@10"]
        print(f"nDCG@10 A {nd['a']:.4f}  B {nd['b']:.4f}")
    fails = threshold_failures(report, args.min_spearman, args.max_ndcg_drop)
    for fail in fails:
        print(f"threshold failed: {fail}", file=sys.stderr)
    return 1 if fails else 0


# Third-party modules `reranker compare` imports (the package's "compare" extra).
COMPARE_MODULES = ("scipy", "ranx", "matplotlib", "tqdm", "httpx")


def _require_modules(extra: str, modules: tuple[str, ...]) -> None:
    """Stop before any model loads when this environment lacks an extra's modules."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise RerankerError(
            f"`reranker {extra}` needs {', '.join(missing)}, missing from this environment "
            f"({sys.prefix}): run `scripts/setup_reranker_venv.sh <backend>` again (it "
            f"installs them), or `pip install 'reranker[{extra}]'`"
        )


def _cmd_serve(args: argparse.Namespace) -> int:
    from reranker.service.server import serve

    return serve(args.config, args.backend, args.host, args.port, args.model)


# --shape values of each kind of family: the Qwen3 ones (the sequence classifier is
# converted in float32: up to 0.6b), and the cross-encoders.
QWEN3_SHAPES = ("tiny", "0.6b", "4b", "8b")
QWEN3_SEQ_CLS_SHAPES = ("tiny", "0.6b")
CROSS_ENCODER_SHAPES = ("tiny", "base", "large")


def _cmd_build_test_model(args: argparse.Namespace) -> int:
    qwen3 = args.family in ("qwen3", "qwen3-seq-cls")
    shapes = {"qwen3": QWEN3_SHAPES, "qwen3-seq-cls": QWEN3_SEQ_CLS_SHAPES}.get(
        args.family, CROSS_ENCODER_SHAPES
    )
    if args.shape not in shapes:
        raise ConfigError(
            f"--shape {args.shape}: the {args.family} family is built as {' or '.join(shapes)}"
        )
    if args.device != "cpu" and (args.family != "qwen3" or args.shape == "tiny"):
        raise ConfigError(
            "--device cuda applies to the qwen3 family's 0.6b, 4b and 8b shapes; "
            f"{args.family} {args.shape} is built on the CPU"
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but torch sees no CUDA device here; leave it out")
    dtype = args.dtype or ("bfloat16" if args.shape in ("4b", "8b") else "float32")
    sizes = ["--shape", args.shape, "--dtype", dtype]
    if args.family == "qwen3-seq-cls":
        from reranker.testing.tiny_qwen3_seq_cls import main as build_seq_cls

        build_seq_cls([args.out_dir, *sizes])
    elif not qwen3:
        from reranker.testing.tiny_cross_encoders import main as build_cross_encoder

        build_cross_encoder([args.out_dir, "--family", args.family, *sizes])
    else:
        from reranker.testing.tiny_qwen3 import main as build

        build([args.out_dir, *sizes, "--device", args.device])
    return 0


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="backend name (default: from config)")
    p.add_argument("--config", help="config file (default: $RERANK_CONFIG or config/config.yaml)")
    p.add_argument("--model", help="model_name override (hub id or local dir)")
    p.add_argument("--option", "-o", action="append", help="backend option KEY=VALUE")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``reranker`` command."""
    parser = argparse.ArgumentParser(
        prog="reranker",
        description="Score how relevant documents are to a query. Commands: backends, score, "
        "bench, compare, serve, build-test-model (each has --help).",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("backends", help="list backends and whether they run here").set_defaults(
        func=_cmd_backends
    )
    p = sub.add_parser("score", help="score documents (args or stdin lines) against a query")
    _add_backend_args(p)
    p.add_argument("query")
    p.add_argument("doc", nargs="*")
    p.add_argument("--raw", action="store_true", help="raw logit(yes)-logit(no)")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser("bench", help="pairs/s and tokens/s on a synthetic workload")
    _add_backend_args(p)
    p.add_argument("--queries", type=int, default=4, help="queries in the workload (4)")
    p.add_argument("--docs", type=int, default=100, help="documents per query")
    p.add_argument("--min-words", type=int, default=100, help="shortest document (100)")
    p.add_argument("--max-words", type=int, default=1250, help="longest document (1250)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (1)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also time the raw counterpart (vLLM generate/score, model card; cross-encoders: "
        "vLLM LLM.score, sentence-transformers CrossEncoder.predict)",
    )
    p.add_argument("--json-out", help="append JSON records to this file")
    p.add_argument(
        "--coalesce",
        action="store_true",
        help="also time all queries in one score_requests call (as under load)",
    )
    p.add_argument(
        "--model-shapes",
        metavar="SHAPES",
        help="bench Qwen3-Reranker sizes instead of --model: comma-separated build-test-model "
        "shapes, e.g. 0.6b,4b,8b; each is built once (random weights, bfloat16) into "
        "--model-dir-root/<shape> and benched in a process of its own; records get a "
        "'shape' key and a table is printed per size",
    )
    p.add_argument(
        "--model-dir-root",
        metavar="DIR",
        help="where --model-shapes builds and reuses its models (8b: 16 GB on disk)",
    )
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("compare", help="A/B two backends or services on the same inputs")
    p.add_argument("--a", required=True, help="SPEC: NAME[:key=value,...] or http://host:port")
    p.add_argument("--b", required=True, help="SPEC of the other side")
    p.add_argument("--data", required=True, help="JSONL file, or a BEIR folder (with --run)")
    p.add_argument("--run", help="TREC run file naming each query's candidates (BEIR)")
    p.add_argument("--qrels", help="qrels file (TSV or TREC) to label the candidates")
    p.add_argument("--depth", type=int, default=100, help="candidates per query from --run")
    p.add_argument("--limit", type=int, help="only the first N queries")
    p.add_argument("--out", default="compare-report", help="output folder")
    p.add_argument("--min-spearman", type=float, help="exit 1 if mean spearman is lower")
    p.add_argument("--max-ndcg-drop", type=float, help="exit 1 if B's nDCG@10 drops more")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("serve", help="start the HTTP service")
    p.add_argument("--backend")
    p.add_argument("--config")
    p.add_argument("--model")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser(
        "build-test-model",
        help="build an offline reranker (Qwen3, the same as a sequence classifier, or a "
        "BERT / XLM-RoBERTa / ModernBERT cross-encoder) with a real tokenizer and random "
        "weights: tiny for tests, or a published model's size for benchmarks",
    )
    p.add_argument("out_dir")
    p.add_argument(
        "--family",
        default="qwen3",
        choices=["qwen3", "qwen3-seq-cls", "bert", "xlm-roberta", "modernbert"],
        help="model family (qwen3); qwen3-seq-cls: the Qwen3 reranker converted to "
        "Qwen3ForSequenceClassification; the cross-encoders' tokenizers come with the tiny extra",
    )
    p.add_argument(
        "--shape",
        default="tiny",
        choices=sorted(set(QWEN3_SHAPES + CROSS_ENCODER_SHAPES)),
        help="tiny (tests); benchmark sizes with random weights: 0.6b, 4b, 8b (qwen3: "
        "Qwen3-Reranker-0.6B, -4B, -8B; qwen3-seq-cls: 0.6b), base or large (cross-encoders: "
        "e.g. BERT-base, XLM-RoBERTa-large as bge-reranker-v2-m3)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="dtype the weights are saved in (default: bfloat16 for 4b and 8b, which are "
        "built in it, 16 GB for 8b; else float32)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="qwen3 0.6b/4b/8b: where the random weights are drawn (cpu; cuda: seconds "
        "instead of minutes for 4b and 8b, other random numbers for the same seed)",
    )
    p.set_defaults(func=_cmd_build_test_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; typed errors become one line on stderr and exit status 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except RerankerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
