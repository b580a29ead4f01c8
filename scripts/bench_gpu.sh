#!/usr/bin/env bash
# GPU benchmark of all three backends and their raw counterparts, on one card, same workload.
#
#   scripts/bench_gpu.sh [extra `reranker bench` args, e.g. --coalesce --repeat 3]
#
# Builds a Qwen3-Reranker-0.6B-shaped model with random weights (throughput does not
# depend on weight values) and the real Qwen3 tokenizer, then runs `reranker bench
# --baseline` per backend, each in its own process, appending JSON records to
# $OUT/bench.jsonl (OUT defaults to .cache/bench) and printing Markdown tables
# (python -m reranker.bench.report, also written to $OUT/bench.md).
# Environment: PYTHON (the interpreter of the backends' venv, default python3),
# BENCH_BACKENDS (default: qwen3_vllm qwen3_vllm_score qwen3_transformers), BENCH_MODEL
# (where the model is built, default /tmp/qwen3-reranker-0.6b-shape), OUT.
# The vLLM backends need `import vllm` to work; see docs/performance.md.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
model="${BENCH_MODEL:-/tmp/qwen3-reranker-0.6b-shape}"
out="${OUT:-$root/.cache/bench}"
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
"$py" -c 'import vllm; print("vllm", vllm.__version__)' || true
[ -f "$model/config.json" ] || "$py" -m reranker.testing.tiny_qwen3 "$model" --shape 0.6b --dtype bfloat16
for backend in ${BENCH_BACKENDS:-qwen3_vllm qwen3_vllm_score qwen3_transformers}; do
  echo "=== $backend"
  "$py" -m reranker.cli bench --backend "$backend" --model "$model" --baseline \
    --json-out "$out/bench.jsonl" "$@" 2>&1 | grep -vE "^(INFO|DEBUG|\(EngineCore)" | tail -n 25
done
"$py" -m reranker.bench.report "$out/bench.jsonl" | tee "$out/bench.md"
