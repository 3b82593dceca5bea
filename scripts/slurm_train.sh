#!/usr/bin/env bash
# Train on a SLURM cluster: one task per GPU, any number of nodes, requeued on pre-emption.
#
#   sbatch --nodes=2 scripts/slurm_train.sh configs/fit/webvid_cc3m.yaml data.root=/data
#
# Every task runs `vidlab train`; Lightning reads the world from SLURM's variables. The run folder is pinned
# to the job id and resume=auto is set, so a requeued job (time limit, pre-emption, node failure) goes on
# from its newest checkpoint: 120 s before the end SLURM sends SIGUSR1, Lightning then writes
# hpc_ckpt_N.ckpt into the stage's checkpoints/ and requeues the job. Batch sizes are global.
#SBATCH --job-name=vidlab-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch $0 CONFIG [KEY=VALUE ...]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
NAME=$(basename "$CONFIG" .yaml)
srun "$PYTHON" -m vidlab.cli.main train "$CONFIG" \
    run_dir="runs/$NAME/slurm-${SLURM_JOB_ID}" resume=auto \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" trainer.num_nodes="${SLURM_NNODES}" "$@"
