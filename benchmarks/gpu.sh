#!/usr/bin/env bash
# The GPU benchmark in one script: a ~125M-parameter TransformerLM training step in bfloat16 with
# fused attention (MFU, tokens/s), decoding tokens/s at batch 1 and 64, and the streaming Conformer's
# real-time factor. Idempotent (the venv and the install are reused); meant to stay under 8 minutes,
# not yet timed on a GPU.
#
#   benchmarks/gpu.sh                # from the repository root or anywhere
#   GPU_VENV=/path/to/venv benchmarks/gpu.sh
#
# It installs the CUDA build of JAX (`jax[cuda12]`) and trax_sl into $GPU_VENV (default .gpu-venv)
# unless JAX there already sees a GPU; where the machine has no network, give it a venv that has them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${GPU_VENV:-.gpu-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "jax[cuda12]"
fi
python -m pip install --quiet -e .
python -c 'import jax, sys; d = jax.devices()[0]; print(f"device: {d.device_kind} ({jax.default_backend()}), jax {jax.__version__}"); sys.exit(jax.default_backend() != "gpu")' \
  || { echo "error: JAX sees no GPU in $VENV" >&2; exit 1; }

# ~125M parameters: d_model 768, 12 layers of 12 heads, d_ff 3072, vocab 32768 (GPT-2 small's shape).
MODEL=(--vocab-size 32768 --d-model 768 --d-ff 3072 --n-layers 12 --n-heads 12)

echo "== training step: float32 vs bfloat16 (tl.WithPolicy), batch 16 x 1024 =="
python benchmarks/train_efficiency.py "${MODEL[@]}" --batch 16 --length 1024 --rounds 3 --calls 5 \
  --configs float32 bfloat16 "bfloat16, grad_accum 4" --grad-accum 4

echo "== decoding and streaming latency =="
python benchmarks/streaming_latency.py "${MODEL[@]}" --decode-dtype bfloat16 --batches 1 64 --steps 128
