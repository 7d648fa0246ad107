#!/bin/bash
# The web chain over a large corpus as Slurm jobs (this script only submits them), the way large pipelines
# divide it: pass 1 (filters, PII, MinHash signatures) as an array, one task per
# shard of the input files; then near-duplicate clusters across all shards in
# one task; then the merge, which writes the same bytes as one `forja-data
# clean` over all the files would.
#
#   sbatch deploy/data-slurm.sh 'corpus/*.jsonl.zst' runs/web 16
#
# Each shard takes a contiguous range of the sorted files (a file is never
# split), and learns its index from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
# Every option of `clean` applies to `clean_shard` (add --set KEY=VALUE to
# PARAMS); the two later steps take theirs from the shards' shard.json.
# The files and OUT must be on a file system every node sees.
#SBATCH --job-name=forja-data
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --output=%x-%j.log
set -euo pipefail
files=${1:?usage: sbatch deploy/data-slurm.sh FILES_GLOB OUT_DIR SHARDS}
out=${2:?usage: sbatch deploy/data-slurm.sh FILES_GLOB OUT_DIR SHARDS}
shards=${3:?usage: sbatch deploy/data-slurm.sh FILES_GLOB OUT_DIR SHARDS}
bin=${FORJA_DATA:-forja-data}
params=(--set preset=web ${PARAMS:-})

shard=$(sbatch --parsable --array=0-$((shards - 1)) --job-name=forja-data-shard --cpus-per-task=4 --mem=8G \
  --wrap "RAYON_NUM_THREADS=\${SLURM_CPUS_PER_TASK} $bin clean_shard --input 'files=$files' ${params[*]} --out $out/shard-\${SLURM_ARRAY_TASK_ID}")
clusters=$(sbatch --parsable --dependency=afterok:$shard --job-name=forja-data-clusters --mem=16G \
  --wrap "$bin dedup_clusters --input 'shards=$out/shard-*' --out $out/clusters")
sbatch --dependency=afterok:$clusters --job-name=forja-data-merge --mem=8G \
  --wrap "$bin merge_shards --name clean --input 'shards=$out/shard-*' --input duplicates=$out/clusters/duplicates.jsonl --out $out/clean"
