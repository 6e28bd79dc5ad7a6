#!/usr/bin/env bash
# Pretrain on many nodes with SLURM: one torchrun per node, each starting one process per GPU; torchrun's c10d
# rendezvous on the first node joins them. Submit with: sbatch examples/slurm-ddp.sh configs/gpt-tiny.yaml
#SBATCH --job-name=pretrainer
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
set -euo pipefail
CONFIG=${1:-configs/gpt-tiny.yaml}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# train.batch_size is the global batch per optimizer step: it must split over nodes x GPUs processes
srun .venv/bin/torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$HEAD_NODE:29500" --rdzv_id="$SLURM_JOB_ID" \
    -m pretrainer train "$CONFIG" --run-dir "runs/$SLURM_JOB_ID" train.parallel=ddp
