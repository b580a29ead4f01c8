"""Turn ``reranker bench --json-out`` records into Markdown tables (CLI: file path)."""

from __future__ import annotations

import json
import re
import sys

PEAK_BF16_TFLOPS = {"H200": 799.0, "H100": 799.0}  # measured-class dense bf16 peak


# Qwen3-0.6B without its embedding table (a lookup, no FLOPs): 28 layers x 15.7M weights.
NON_EMBEDDING_PARAMS = 0.44e9
# A published Qwen3-Reranker size in a model's name (hub id or folder).
SIZE_IN_NAME = re.compile(r"reranker-(0\.6b|4b|8b)", re.IGNORECASE)


def record_shape(record: dict) -> str | None:
    """The Qwen3-Reranker size of a record: its ``shape`` (``bench --model-shapes``), else
    the size its model's name gives (``Qwen/Qwen3-Reranker-8B``), else ``None``."""
    if record.get("shape"):
        return str(record["shape"])
    found = SIZE_IN_NAME.search(str(record.get("model", "")))
    return found.group(1).lower() if found else None


def record_params(record: dict) -> float:
    """Non-embedding weights of a record's model: its size's (:func:`record_shape`), else
    Qwen3-Reranker-0.6B's."""
    from reranker.testing.tiny_qwen3 import SHAPES, non_embedding_params

    shape = record_shape(record)
    return float(non_embedding_params(shape)) if shape in SHAPES else NON_EMBEDDING_PARAMS


def flops_per_token(params: float = NON_EMBEDDING_PARAMS) -> float:
    """Matmul FLOPs per token of a dense decoder with ``params`` weights (2 per weight);
    attention scores add ~4% at 500 tokens and are left out, so shares are a lower bound."""
    return 2.0 * params


def qwen3_sized(record: dict) -> bool:
    """Whether a record is of a Qwen3-Reranker-shaped model (the peak share's FLOPs a
    token: :func:`record_params`): not of a cross-encoder backend or its baseline."""
    return "cross_encoder" not in record["backend"]


def run_label(record: dict, name: str | None = None) -> str:
    """A record's row name (``name``, else its raw baseline's or its backend's), with its
    quantization where that is not ``none``: bf16 and fp8 runs of one backend read apart."""
    label = name or record.get("baseline") or record["backend"]
    quantization = record.get("quantization")
    return f"{label} [{quantization}]" if quantization not in (None, "none") else label


def table(records: list[dict], host_memory: bool = False) -> str:
    """One row per record: pairs/s, tokens/s, share of bf16 peak (Qwen3-Reranker-shaped
    runs, each at its size's FLOPs a token), memory (``host_memory``: also the process's
    peak resident memory), device."""
    host = " peak host RSS (GiB) |" if host_memory else ""
    rows = [
        "| run | pairs/s | tokens/s | % of bf16 peak | GPU mem used (GiB) "
        f"| peak torch alloc (GiB) |{host} device |",
        "| --- | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: |" if host_memory else "")
        + " --- |",
    ]
    tokens_per_pair = next(
        (r["mean_tokens_per_pair"] for r in records if "mean_tokens_per_pair" in r), None
    )
    for r in records:
        tps = r.get("tokens_per_s") or (
            r["pairs_per_s"] * tokens_per_pair if tokens_per_pair else None
        )
        device = r.get("device", "?")
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
        share = "-"
        if tps and peak and qwen3_sized(r):
            share = f"{100 * tps * flops_per_token(record_params(r)) / (peak * 1e12):.1f}"
        label = run_label(r)
        tokens = f"{tps:,.0f} | {share}" if tps else "- | -"
        rss = f" {r.get('peak_host_mem_gib') or '-'} |" if host_memory else ""
        rows.append(
            f"| {label} | {r['pairs_per_s']:.1f} | {tokens} | {r.get('gpu_mem_used_gib', '-')} "
            f"| {r.get('peak_torch_mem_gib', '-')} |{rss} {device} |"
        )
    return "\n".join(rows)


def by_shape(records: list[dict]) -> str:
    """A section per model size (records' ``shape``, in the order first seen): the table
    with peak memory, and the backends against the size's raw baselines."""
    shapes = list(dict.fromkeys(str(r.get("shape", "?")) for r in records))
    sections = []
    for shape in shapes:
        mine = [r for r in records if str(r.get("shape", "?")) == shape]
        sections.append(
            f"### {shape}\n\n{table(mine, host_memory=True)}\n\n{against_baselines(mine)}"
        )
    return "\n\n".join(sections)


def against_baselines(records: list[dict]) -> str:
    """Each backend's best rate in the run (one call per query or coalesced) as a multiple
    of each raw counterpart timed in the same run."""
    best: dict[str, float] = {}
    for r in records:
        name = run_label(r, r["backend"].removesuffix(" (queries coalesced)"))
        best[name] = max(best.get(name, 0.0), r["pairs_per_s"])
    baselines = [
        (label, best[key])
        for key, label in (
            ("baseline:qwen3_vllm", "raw LLM.generate"),
            ("baseline:qwen3_vllm_score", "raw LLM.score"),
            ("baseline:qwen3_transformers", "model card recipe"),
            ("baseline:cross_encoder_vllm", "raw LLM.score (text pairs)"),
            ("baseline:cross_encoder_transformers", "CrossEncoder.predict"),
        )
        if best.get(key)
    ]
    ours = [(k, v) for k, v in best.items() if not k.startswith("baseline:")]
    if not baselines or not ours:
        return "no raw baseline in this run"
    lines = [
        "| backend | best pairs/s | " + " | ".join(f"x {label}" for label, _ in baselines) + " |",
        "| --- | ---: |" + " ---: |" * len(baselines),
    ]
    for name, value in ours:
        ratios = " | ".join(f"{value / base:.2f}" for _, base in baselines)
        lines.append(f"| {name} | {value:.1f} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the tables of the JSON-lines file given as the first argument: one section
    per model size where the records have a ``shape`` (``bench --model-shapes``)."""
    path = (argv or sys.argv[1:])[0]
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if any("shape" in r for r in records):
        print(by_shape(records))
        return
    print(table(records))
    print()
    print(against_baselines(records))


if __name__ == "__main__":
    main()
