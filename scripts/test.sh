#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run).
#
#   scripts/test.sh            # all suites: transformers venv, then the vLLM venv
#   scripts/test.sh core       # unit + parity + service tests in the transformers venv only
#   scripts/test.sh vllm       # the real-vLLM-engine tests only
#   scripts/test.sh gpu        # CUDA tests (tests/gpu), on a GPU machine, with the python
#                              # already there ($PYTHON, default python3); CI has no GPU
#
# It creates the venvs it needs (scripts/setup_reranker_venv.sh, idempotent), builds the
# offline tiny Qwen3 model once into .cache/tiny-qwen3, and fails on any failure or on
# a suite that ran no test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
which="${1:-all}"

tf_venv="$root/.venv-reranker-qwen3_transformers"
vllm_venv="$root/.venv-reranker-qwen3_vllm"
export RERANK_TEST_MODEL="$root/.cache/tiny-qwen3"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

run_pytest() {  # venv or python executable, args...
  local py="$1"; shift
  [ -d "$py" ] && py="$py/bin/python"
  set +e
  "$py" -m pytest -p no:cacheprovider -ra "$@"
  local rc=$?
  set -e
  if [ "$rc" = 5 ]; then echo "error: pytest collected no test: $*" >&2; exit 1; fi
  [ "$rc" = 0 ] || exit "$rc"
}

if [ "$which" = gpu ]; then
  py="${PYTHON:-python3}"
  [ -f "$RERANK_TEST_MODEL/config.json" ] || "$py" -m reranker.testing.tiny_qwen3 "$RERANK_TEST_MODEL"
  RERANK_REQUIRE_GPU=1 run_pytest "$py" tests/gpu tests/parity/test_qk_norm_rope.py \
    tests/parity/test_swiglu.py tests/parity/test_fp8_swiglu.py tests/parity/test_fp8_quant.py -s
  echo "scripts/test.sh gpu: passed"
  exit 0
fi

bash scripts/setup_reranker_venv.sh qwen3_transformers --dev --with ray
wanted=$("$tf_venv/bin/python" -c 'from reranker.testing.tiny_qwen3 import BUILDER_VERSION as v; print(v)')
if ! grep -q "\"builder_version\": $wanted" "$RERANK_TEST_MODEL/reranker_test_model.json" 2>/dev/null; then
  rm -rf "$RERANK_TEST_MODEL"
  "$tf_venv/bin/python" -m reranker.testing.tiny_qwen3 "$RERANK_TEST_MODEL"
fi

if [ "$which" = all ] || [ "$which" = core ]; then
  "$tf_venv/bin/ruff" check reranker tests
  "$tf_venv/bin/mypy" reranker
  # The transformers venv has Ray: the scale-out tests (tests/scale) must run there.
  RERANK_REQUIRE_RAY=1 run_pytest "$tf_venv" tests --ignore=tests/vllm --ignore=tests/gpu
fi

if [ "$which" = all ] || [ "$which" = vllm ]; then
  # Both vLLM backends need the same packages: one venv serves the two of them here.
  bash scripts/setup_reranker_venv.sh qwen3_vllm --dev --with ray
  RERANK_REQUIRE_VLLM=1 RERANK_REQUIRE_RAY=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" \
    run_pytest "$vllm_venv" tests/vllm
fi
echo "scripts/test.sh $which: all suites passed"
