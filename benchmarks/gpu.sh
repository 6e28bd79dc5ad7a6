#!/usr/bin/env bash
# GPT-2 124M training on one lent GPU (H100/H200): ours against transformers' GPT2LMHeadModel, tokens/s and MFU,
# bf16, compiled, synthetic tokens (benchmarks/gpu_gpt2.py). Under 8 minutes on an H100.
# Self-contained, and it needs no package registry on the GPU machine: a python3 that already imports torch (a GPU
# image's own CUDA build) is used as it is, and what it lacks of ours' imports goes beside it, into
# /tmp/pretrainer-site (nothing of the machine's changes): from .whl/ when it is there, else from the registry.
# Where python3 has no torch, a venv gets torch==2.13.0 and the rest. This project runs from src/, uninstalled.
#   bash benchmarks/gpu.sh --fetch-wheels   # here, with a registry: the wheels a GPU image lacks, into .whl/
#   bash benchmarks/gpu.sh                  # there (carry .whl): the measurement
#   bash benchmarks/gpu.sh --dry-run        # tiny shapes, any device, seconds: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
# module:requirement of ours' imports beyond torch (seqeval and rouge-score are imported only where they score)
NEEDS="omegaconf:omegaconf transformers:transformers>=4.45 tokenizers:tokenizers safetensors:safetensors yaml:pyyaml
tqdm:tqdm numpy:numpy matplotlib:matplotlib scipy:scipy"
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # the one the lent H200's image was seen without (benchmarks/RESULTS.md): pure Python, needing only pyyaml
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0
    echo "wheels in .whl/ (git ignores it): carry .whl to the GPU machine and run bash benchmarks/gpu.sh there"
    exit
fi

missing() {  # the requirements of NEEDS whose module $PY cannot import
    "$PY" -c 'import importlib.util as u, sys
print(" ".join(n.split(":")[1] for n in sys.argv[1].split() if u.find_spec(n.split(":")[0]) is None))' "$NEEDS"
}

PY=python3
SITE=/tmp/pretrainer-site
if ! "$PY" -c "import torch" 2>/dev/null; then  # no torch here: a venv of our own, all from the registry
    python3 -m venv /tmp/pretrainer-gpu-venv
    PY=/tmp/pretrainer-gpu-venv/bin/python
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q $(missing)
elif [[ -n "$(missing)" ]]; then  # the machine's own torch: only what it lacks, beside it, without dependencies
    echo "installing into $SITE: $(missing)"
    if [[ -d .whl ]]; then
        "$PY" -m pip install -q --no-index --find-links .whl --no-deps --target "$SITE" $(missing)
    else
        "$PY" -m pip install -q --no-deps --target "$SITE" $(missing)
    fi
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" benchmarks/gpu_gpt2.py "$@"
