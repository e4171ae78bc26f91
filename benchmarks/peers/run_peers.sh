#!/usr/bin/env bash
# Runs the training-step and decode benchmark in trax_sl, SequenceLayers and Trax,
# each in a venv of its own, and prints the three side by side.
#
#   benchmarks/peers/run_peers.sh [--no-trax] [--no-sequence-layers] [--rounds N]
#
# Venvs are made on first use (network needed then) and reused after:
#   SL_VENV   (default /tmp/slvenv):   sequence-layers==0.2, flax, optax
#   TRAX_VENV (default /tmp/traxvenv): trax==1.4.1 with jax 0.4.13 and TensorFlow 2.12
# trax_sl runs with TRAX_SL_PYTHON (default: python, with the repository on PYTHONPATH).
# Not part of CI: it downloads the peers and takes several minutes.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
peers="$root/benchmarks/peers"
sl_venv="${SL_VENV:-/tmp/slvenv}"
trax_venv="${TRAX_VENV:-/tmp/traxvenv}"
trax_sl_python="${TRAX_SL_PYTHON:-python}"
base_python="${PYTHON:-python3}"
run_trax=1
run_sl=1
rounds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --no-trax) run_trax=0 ;;
    --no-sequence-layers) run_sl=0 ;;
    --rounds) rounds="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

make_venv() {  # make_venv DIR PACKAGE...: creates DIR with the packages unless it has a python already.
  local dir="$1"; shift
  if [ ! -x "$dir/bin/python" ]; then
    echo "+ creating $dir: $*"
    "$base_python" -m venv "$dir"
    "$dir/bin/pip" install --quiet --upgrade pip
    "$dir/bin/pip" install --quiet "$@"
  fi
}

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

echo "+ trax_sl"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$trax_sl_python" "$peers/trax_sl_peer.py" --rounds "$rounds" \
  >"$logs/trax_sl.log" 2>&1 || echo "trax_sl failed: $(tail -3 "$logs/trax_sl.log")"

if [ "$run_sl" = 1 ]; then
  echo "+ sequence-layers"
  make_venv "$sl_venv" "sequence-layers==0.2" flax optax
  "$sl_venv/bin/python" "$peers/sequence_layers_peer.py" --rounds "$rounds" \
    >"$logs/sequence_layers.log" 2>&1 || echo "sequence-layers failed: $(tail -3 "$logs/sequence_layers.log")"
fi

if [ "$run_trax" = 1 ]; then
  echo "+ trax"
  make_venv "$trax_venv" "trax==1.4.1" "jax==0.4.13" "jaxlib==0.4.13" "tensorflow==2.12.1" \
    "tensorflow-text==2.12.1" "numpy<1.24" "tensorflow-metadata<1.15"
  "$trax_venv/bin/python" "$peers/trax_peer.py" --rounds "$rounds" \
    >"$logs/trax.log" 2>&1 || echo "trax failed: $(tail -3 "$logs/trax.log")"
fi

names=("$logs/trax_sl.log")
[ "$run_sl" = 1 ] && names+=("$logs/sequence_layers.log")
[ "$run_trax" = 1 ] && names+=("$logs/trax.log")
"$trax_sl_python" "$peers/compare.py" "${names[@]}"
