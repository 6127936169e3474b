#!/usr/bin/env bash
# Multi-GPU test: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# Environment as in OpenMMLab: NNODES, NODE_RANK, PORT, MASTER_ADDR; PYTHON picks the
# interpreter. Without GPUs it runs GPUS CPU processes (gloo backend).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
# Known user errors get one line here, before torchrun would wrap each rank's in its report.
if [ ! -f "$CONFIG" ]; then
    echo "dist_test.sh: error: config $CONFIG: no such file" >&2
    exit 1
fi
PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -c '
import sys
from mmtt.checkpoint import checkpoint_shapes
try:
    checkpoint_shapes(sys.argv[1])
except ValueError as err:
    sys.exit(f"dist_test.sh: error: {err}")' "$CHECKPOINT"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
"${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch \
    "${@:4}"
