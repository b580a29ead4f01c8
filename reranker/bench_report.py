"""Turn ``reranker bench --json-out`` records into a Markdown table (CLI: file path)."""

from __future__ import annotations

import json
import sys

PEAK_BF16_TFLOPS = {"H200": 799.0, "H100": 799.0}  # measured-class dense bf16 peak


def flops_per_token(params: float = 0.6e9) -> float:
    """Forward FLOPs per token of a dense model with ``params`` weights (2 per weight)."""
    return 2.0 * params


def table(records: list[dict]) -> str:
    """One row per record: pairs/s, tokens/s, share of bf16 peak, memory, device."""
    rows = [
        "| run | pairs/s | tokens/s | % of bf16 peak | GPU mem used (GiB) | device |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
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
        share = f"{100 * tps * flops_per_token() / (peak * 1e12):.1f}" if tps and peak else "-"
        label = r.get("baseline") or r["backend"]
        rows.append(
            f"| {label} | {r['pairs_per_s']:.1f} | {tps:,.0f} | {share} | "
            f"{r.get('gpu_mem_used_gib', r.get('peak_torch_mem_gib', '-'))} | {device} |"
            if tps
            else f"| {label} | {r['pairs_per_s']:.1f} | - | - | - | {device} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Print the table of the JSON-lines file given as the first argument."""
    path = (argv or sys.argv[1:])[0]
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    print(table(records))


if __name__ == "__main__":
    main()
