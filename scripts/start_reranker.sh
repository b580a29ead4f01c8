#!/usr/bin/env bash
# Start the reranking service with the configured backend's virtualenv.
#
#   scripts/start_reranker.sh [--backend NAME] [--config PATH] [--host H] [--port P] [--model M]
#
# The backend comes from --backend, else $RERANK_BACKEND, else services.rerank.backend in
# the config (--config, else $RERANK_CONFIG, else config/config.yaml). Its venv
# (.venv-reranker-<backend>, made by scripts/setup_reranker_venv.sh) goes first on PATH
# and runs `reranker serve`. SIGTERM / SIGINT are forwarded so in-flight requests drain.
# Exit status: reranker serve's (0 drained stop, 2 bad config or failed load, 4 backend
# died while serving), or 2 / 3 when this script cannot start it (bad argument / no venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
backend="${RERANK_BACKEND:-}"
config="${RERANK_CONFIG:-$root/config/config.yaml}"
case "$config" in /*) ;; *) config="$PWD/$config" ;; esac
serve_args=()
# Paths named relative to where the script is started from, as absolute ones: the service
# runs from the repository root.
from_here() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --backend|--config|--host|--port|--model)
      if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "error: $1 needs a value (see --help)" >&2
        exit 2
      fi ;;
  esac
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --config) config="$(from_here "$2")"; shift 2 ;;
    --model)
      # A local folder named from here; anything else (a hub id) as given.
      if [ -d "$2" ]; then serve_args+=("$1" "$(from_here "$2")"); else serve_args+=("$1" "$2"); fi
      shift 2 ;;
    --host|--port) serve_args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ ! -f "$config" ]; then
  echo "error: config file $config does not exist" >&2
  exit 2
fi
if [ -z "$backend" ]; then
  # Read services.rerank.backend without needing any venv: a tiny YAML-path reader.
  backend=$(awk '
    /^[^ #][^:]*:/ { top=$1 } 
    top=="services:" && /^  rerank:/ { inr=1; next }
    inr && /^  [^ ]/ { inr=0 }
    inr && /^    backend:/ { sub(/#.*/, ""); print $2; exit }' "$config")
  backend="${backend:-qwen3_transformers}"
fi
venv="${RERANK_VENV_ROOT:-$root}/.venv-reranker-${backend}"
# A backend whose requirements file says "# venv: OTHER" needs the same packages as OTHER:
# OTHER's venv serves it when it has none of its own.
shared=$(sed -n 's/^# venv: \([A-Za-z0-9_]*\).*/\1/p' \
  "$root/scripts/requirements_reranker_${backend}.txt" 2>/dev/null | head -n 1)
if [ ! -x "$venv/bin/python" ] && [ -n "$shared" ] \
   && [ -x "${RERANK_VENV_ROOT:-$root}/.venv-reranker-$shared/bin/python" ]; then
  venv="${RERANK_VENV_ROOT:-$root}/.venv-reranker-$shared"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "error: the venv of backend '$backend' is missing ($venv)." >&2
  echo "       create it with: scripts/setup_reranker_venv.sh $backend" >&2
  exit 3
fi
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" RERANK_CONFIG="$config" RERANK_BACKEND="$backend"
cd "$root"
echo "[start] backend=$backend venv=$venv config=$config"
"$venv/bin/python" -m reranker.cli serve "${serve_args[@]}" &
child=$!
forward() { kill -"$1" "$child" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT
set +e
while true; do
  wait "$child"; rc=$?
  # wait returns early (rc > 128) when a trapped signal arrives; keep waiting for the child.
  if kill -0 "$child" 2>/dev/null; then continue; fi
  exit "$rc"
done
