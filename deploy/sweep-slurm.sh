#!/bin/bash
# The trials of a `forja sweep` as a Slurm job array: each array task runs one
# trial's self-contained pipeline file. Grid and random searches only: ASHA's
# early stopping needs `forja sweep` watching the trials (run it on one node
# with `parallel` instead).
#
#   forja sweep pipelines/quickstart.toml --prepare          # writes runs/quickstart/sweep/trial-NNNN/pipeline.toml
#   sbatch --array=0-5 deploy/sweep-slurm.sh runs/quickstart/sweep
#   forja sweep pipelines/quickstart.toml                    # every trial's stages are cached now:
#                                                            # collects, ranks, plots, writes best.toml
#
# The repository (and runs/) must be on a file system every node sees.
#SBATCH --job-name=forja-sweep
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --output=%x-%A_%a.log
set -euo pipefail
dir=${1:?usage: sbatch --array=0-N deploy/sweep-slurm.sh SWEEP_DIR}
trial=$(printf "%s/trial-%04d/pipeline.toml" "$dir" "${SLURM_ARRAY_TASK_ID:?not a Slurm array task}")
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-4}
exec "${FORJA:-forja}" run "$trial"
