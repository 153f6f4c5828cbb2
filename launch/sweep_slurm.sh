#!/bin/bash
# An ablation on a SLURM cluster: its prepare steps as one job, then every run of the sweep
# as one task of a job array (in parallel; each task may itself span nodes, like any job
# of launch/slurm.sbatch), then the aggregate, which runs once the array is over whatever
# finished (a failed task is recorded in its run's sweep_error.json).
#   bash launch/sweep_slurm.sh configs/ablations/codebook_size.py /shared/runs/codebook_size \
#     [extra sbatch options for the array, e.g. --nodes=1 --gpus-per-node=1]
# Rerunning it skips the finished runs (each task is then a no-op). The workdir must be on
# a filesystem every node sees.
set -euo pipefail
config=$1; workdir=$2; shift 2
cd "$(dirname "$0")/.."
runs=$(.venv/bin/vqlab sweep --config "$config" --workdir "$workdir" --list | grep -c '^ *[0-9]')
echo "sweep $config: $runs runs into $workdir"
prep=$(sbatch --parsable --nodes=1 --job-name=vqlab-prep launch/slurm.sbatch \
       sweep --config "$config" --workdir "$workdir" --prepare)
array=$(sbatch --parsable --dependency=afterok:"$prep" --array=0-$((runs - 1)) \
        --job-name=vqlab-sweep "$@" launch/sweep_task.sbatch "$config" "$workdir")
agg=$(sbatch --parsable --dependency=afterany:"$array" --nodes=1 --job-name=vqlab-aggregate \
      launch/slurm.sbatch sweep --config "$config" --workdir "$workdir" --aggregate)
echo "prepare job $prep, array $array (tasks 0-$((runs - 1))), aggregate $agg"
