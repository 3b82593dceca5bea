#!/usr/bin/env bash
# Train with torchrun: one process per GPU (or per CPU worker with trainer.accelerator=cpu).
#
#   scripts/torchrun_train.sh CONFIG NPROC_PER_NODE [KEY=VALUE ...]
#
# One node, 8 GPUs:
#   scripts/torchrun_train.sh configs/fit/webvid_cc3m.yaml 8 data.root=/data
# Two nodes: run the same command on each node with the rendezvous set (run_dir pins one folder for all):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_train.sh configs/fit/webvid_cc3m.yaml 8 run_dir=runs/fit/job1
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 scripts/torchrun_train.sh configs/fit/webvid_cc3m.yaml 8 run_dir=runs/fit/job1
# Two CPU processes on this machine (gloo over loopback):
#   GLOO_SOCKET_IFNAME=lo scripts/torchrun_train.sh configs/fit/shapes_tiny.yaml 2 trainer.accelerator=cpu
#
# vidlab reads the world from torchrun's variables: trainer.devices=auto becomes NPROC_PER_NODE and
# trainer.num_nodes NNODES. Batch sizes in the config are global (summed over all processes).
# Add resume=auto to go on from the newest checkpoint after a crash. Paths (CONFIG, data.root=, run_dir=) are
# relative to the folder you run this from, as with `vidlab train`.
set -euo pipefail
usage="usage: $0 CONFIG NPROC_PER_NODE [KEY=VALUE ...]"
CONFIG=${1:?$usage}
NPROC=${2:?$usage}
shift 2
# No cd: the paths given are the caller's. The repository's .venv, else python3 with the repository importable.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m vidlab.cli.main train "$CONFIG" "$@"
