#!/usr/bin/env bash
# Speed of the flagship dense-prediction configs against the unmodified model, every variant
# built in one process and timed in interleaved rounds (random weights: speed does not depend
# on them). Run with nothing else on the machine; results go to benchmarks/results/.
# Usage: benchmarks/hosts.sh [segmenter|dpt|dino|all] [compile] [extra tools/benchmark.py arguments]
# compile: every variant under torch.compile (tools/benchmark.py --compile), the results to
# benchmarks/results/compiled/ under the same names, so the eager ones stay beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}; shift || true
OUT=benchmarks/results; MODE=()
if [ "${1:-}" = compile ]; then shift; OUT=benchmarks/results/compiled; MODE=(--compile); fi
PY=${PY:-.venv/bin/python}
COMMON=(--batch 1 --warmup 1 --repeats 3 ${MODE[@]+"${MODE[@]}"})
case $which in segmenter|all)
  # --sdpa-baseline: the unmodified model on the fused attention kernel a reduced model uses.
  $PY tools/benchmark.py --config configs/segmenter_tt_ade20k.py --sdpa-baseline "${COMMON[@]}" "$@" \
    --json $OUT/hosts_segmenter.json;; esac
case $which in dpt|all)
  $PY tools/benchmark.py --config configs/dpt_tt_nyu.py --shape 480 640 "${COMMON[@]}" "$@" \
    --json $OUT/hosts_dpt.json;; esac
case $which in dino|all)
  $PY tools/benchmark.py --config configs/dino_tt_swin-l_coco.py --shape 800 1333 --part backbone \
    "${COMMON[@]}" "$@" --json $OUT/hosts_dino.json;; esac
