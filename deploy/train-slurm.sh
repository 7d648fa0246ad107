#!/bin/bash
# Data-parallel training of one stage across nodes with Slurm: `srun` starts
# one forja rank per task; each reads SLURM_PROCID, SLURM_STEP_NUM_TASKS and
# SLURM_LOCALID and meets the others at the first host of the job's node list
# (MASTER_PORT, default 29500), where rank 0 hosts the rendezvous store. The
# ranks sum their gradients on libtorch's c10d (Gloo on CPU); rank 0 writes
# the stage's outputs and checkpoints, so OUT must be on a file system every
# node sees. Resubmitting the same command resumes from the last checkpoint.
#
#   sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 deploy/train-slurm.sh \
#     forja stage pretrain --params lm.json --input tokenizer=runs/x/tok/tokenizer.json \
#       --input train=runs/x/ids/train.tokens.arrow --input val=runs/x/ids/val.tokens.arrow \
#       --set train.threads=16 --out runs/x/lm-ddp
#
# The data stages before it run once (`forja run` on one node). `train.batch_size`
# is each rank's micro-batch: the global batch is ranks × batch_size × grad_accum.
# On GPU nodes use --device cuda: each rank takes cuda:SLURM_LOCALID.
#SBATCH --job-name=forja-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --output=%x-%j.log
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: sbatch deploy/train-slurm.sh forja stage KIND ARGS..." >&2; exit 2; }
export MASTER_PORT=${MASTER_PORT:-29500}
# One rank failing ends the job (the others also stop by themselves at their
# next collective, naming it).
srun --kill-on-bad-exit=1 "$@"
