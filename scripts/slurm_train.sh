#!/usr/bin/env bash
# Multi-node continual training under Slurm: one torchrun per node, c10d rendezvous on the first node.
#   sbatch --nodes=4 --gpus-per-node=8 scripts/slurm_train.sh configs/multi-node.toml
#SBATCH --job-name=ptychosteer-train
#SBATCH --ntasks-per-node=1
#SBATCH --time=12:00:00
set -euo pipefail
CONFIG=${1:-configs/multi-node.toml}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=${SLURM_GPUS_ON_NODE:-8}
srun torchrun --nnodes="$SLURM_NNODES" --nproc-per-node="$GPUS" \
    --rdzv-backend=c10d --rdzv-endpoint="$HEAD:29500" --rdzv-id="$SLURM_JOB_ID" \
    -m ptychosteer.cli train --config "$CONFIG" --resume
