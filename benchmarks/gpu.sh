#!/usr/bin/env bash
# GPT-2 124M training on one lent GPU (H100/H200): ours against transformers' GPT2LMHeadModel, tokens/s and MFU,
# bf16, compiled, synthetic tokens (benchmarks/gpu_gpt2.py). Under 8 minutes on an H100. Self-contained: a fresh
# venv that sees the machine's packages (a device machine may reach no package registry, so its own CUDA torch
# is used when it has one; otherwise torch==2.13.0 is installed), then this project.
#   bash benchmarks/gpu.sh              # the measurement
#   bash benchmarks/gpu.sh --dry-run    # tiny shapes, any device, seconds: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pretrainer-gpu-venv}
python3 -m venv --system-site-packages "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q -e . "transformers>=4.45"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$VENV/bin/python" benchmarks/gpu_gpt2.py "$@"
