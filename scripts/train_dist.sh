#!/usr/bin/env bash
# Data-parallel training through paddle.distributed.launch.
#
#   scripts/train_dist.sh N CONFIG [tools/train.py arguments...]
#
# One machine: N GPUs (--gpus 0,...,N-1) when nvidia-smi sees GPUs, else N CPU processes over gloo.
# Several machines: run the same command on each, with NNODES=<machines> MASTER=<ip of the first>:<port>.
# Logs of every rank go to $LOG_DIR (default output/dist_logs); rank 0 prints the run's own log.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N CONFIG [train.py args...]" >&2
  exit 2
fi
n=$1; config=$2; shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
launch=("$python" -m paddle.distributed.launch --log_dir "${LOG_DIR:-output/dist_logs}")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  launch+=(--gpus "$(seq -s, 0 $((n - 1)))")
else
  launch+=(--nproc_per_node "$n")
fi
if [ -n "${NNODES:-}" ]; then
  launch+=(--nnodes "$NNODES" --master "${MASTER:?set MASTER=ip:port of the first machine}")
fi
exec "${launch[@]}" "$here/tools/train.py" -c "$config" "$@"
