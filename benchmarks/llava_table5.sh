#!/usr/bin/env bash
# LLaVA-1.5 answers and time to first token on your image/question pairs: the unreduced model against
# Token Transforming (paper and fast), ToMe, PruMerge, PruMerge+ and VisionZip at 64, 128 and 192 visual
# tokens, 32 new tokens, 1 warm-up and 3 timed rounds; writes benchmarks/results/llava_table5_<model>_<device>.json.
# Usage: benchmarks/llava_table5.sh MODEL_DIR PAIRS_DIR [benchmarks/llava_table5.py arguments]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: benchmarks/llava_table5.sh MODEL_DIR PAIRS_DIR [benchmarks/llava_table5.py arguments]" >&2
  exit 2
fi
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
model=$(absolute "$1")
pairs=$(absolute "$2")
shift 2
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec $PY benchmarks/llava_table5.py --model "$model" --pairs "$pairs" \
  --methods transform transform:fast tome prumerge prumerge+ visionzip --visual-tokens 64 128 192 \
  --max-new-tokens 32 --warmup 1 --rounds 3 "$@"
