#!/usr/bin/env bash
# One reduction of the real ViT-S/14 at 448 px (N = 1024 tokens entering block 4), step by step:
# attention with and without the eq. 2 scores, the build of W, W X, recovery, against ToMe.
# Run with nothing else on the machine; the result goes to benchmarks/results/.
# Usage: benchmarks/reduction_cost.sh [compile] [extra mmtt.tools.reduction_cost arguments]
# compile: every step under torch.compile (--compile), the result to
# benchmarks/results/compiled/reduction_cost.json, beside the eager one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results; MODE=()
if [ "${1:-}" = compile ]; then shift; OUT=benchmarks/results/compiled; MODE=(--compile); fi
PY=${PY:-.venv/bin/python}
IMAGES=${IMAGES:-../shared/data/imagenet-samples}
$PY -m mmtt.tools.reduction_cost --images "$IMAGES" --repeats 15 --score-strides 8 --top-k 2 \
  --dtypes float32 bfloat16 --kappa 0.3 --mixed --anchor --distinct-stride 4 ${MODE[@]+"${MODE[@]}"} "$@" \
  --json $OUT/reduction_cost.json
