#!/usr/bin/env bash
# Multi-node continual training under PBS Pro: one torchrun per node via mpiexec, c10d rendezvous.
#   qsub -l select=4:ngpus=8 -v CONFIG=configs/multi-node.toml scripts/pbs_train.sh
#PBS -N ptychosteer-train
#PBS -l walltime=12:00:00
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
CONFIG=${CONFIG:-configs/multi-node.toml}
NNODES=$(sort -u "$PBS_NODEFILE" | wc -l)
HEAD=$(head -n 1 "$PBS_NODEFILE")
mpiexec -n "$NNODES" --ppn 1 torchrun --nnodes="$NNODES" --nproc-per-node="${NGPUS:-8}" \
    --rdzv-backend=c10d --rdzv-endpoint="$HEAD:29500" --rdzv-id="${PBS_JOBID:-ptychosteer}" \
    -m ptychosteer.cli train --config "$CONFIG" --resume
