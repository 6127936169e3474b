#!/usr/bin/env bash
# One-shot speed run on one CUDA device in at most 8 minutes (--max-minutes): timm ViT-S/B/L eager and
# compiled, Segmenter-L and Swin-L backbones, float16 and bfloat16; writes benchmarks/results/gpu_<device>.json.
# Usage: benchmarks/gpu.sh [benchmarks/gpu.py arguments]   (--device cpu --small: a quick check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec $PY benchmarks/gpu.py "$@"
