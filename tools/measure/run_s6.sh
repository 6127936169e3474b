#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/ (the plot the
# README shows is copied to docs/). Session 6: every peer and the documented Token Transforming
# settings in one run per precision and size, batch 1 latency and batch 4 time.
# Usage: tools/measure/run_s6.sh [fp32|bf16|224|dino|cost|all] [extra pareto.py arguments]
set -e
which=${1:-all}; shift || true
PY=${PY:-.venv/bin/python}
M=selection:mixed,kappa:0.3,recovery:share,top_k:4
COMMON="--images ../shared/data/imagenet-samples --limit 16 --threads 2 --batch 4 --warmup 1 --keep-ratios 0.5 0.7 0.9"
PEERS="tome=method:tome tome-hidden=method:tome,metric:hidden prune=method:prune evit=method:evit tps=method:tps pitome=method:pitome"
if [ "$which" = fp32 ] || [ "$which" = all ]; then
  $PY tools/pareto.py $COMMON --size 448 --repeats 11 --variants tt=method:transform \
    tt-fast=method:transform,score_stride:4,recovery:share,top_k:4 mixed03=$M mixed03-s4=$M,score_stride:4 \
    mixed03-s8-k2=selection:mixed,kappa:0.3,recovery:share,top_k:2,score_stride:8 $PEERS \
    hourglass-once=method:hourglass,recovery:reconstruct,cluster_temperature:100,recovery_temperature:10,layers:3 \
    --out-json outputs/pareto_s6_fp32.json --out-png outputs/pareto_s6_fp32.png "$@" 2>&1 | tee outputs/pareto_s6_fp32.log
fi
if [ "$which" = bf16 ] || [ "$which" = all ]; then
  $PY tools/pareto.py $COMMON --size 448 --repeats 9 --dtype bfloat16 --variants tt=method:transform \
    mixed03=$M mixed03-s4=$M,score_stride:4 $PEERS \
    --out-json outputs/pareto_s6_bf16.json --out-png outputs/pareto_s6_bf16.png "$@" 2>&1 | tee outputs/pareto_s6_bf16.log
fi
if [ "$which" = 224 ] || [ "$which" = all ]; then
  $PY tools/pareto.py $COMMON --size 224 --repeats 11 --variants tt=method:transform \
    mixed03=$M mixed03-s4=$M,score_stride:4 $PEERS \
    --out-json outputs/pareto_s6_224.json --out-png outputs/pareto_s6_224.png "$@" 2>&1 | tee outputs/pareto_s6_224.log
fi
if [ "$which" = dino ] || [ "$which" = all ]; then
  $PY tools/benchmark.py --config configs/dino/dino_tt_swin-l_coco.py --shape 800 1333 --part backbone \
    --batch 1 --warmup 1 --repeats 7 --threads 2 --json outputs/bench6_dino_tt.json 2>&1 | tee outputs/bench6_dino_tt.log
fi
if [ "$which" = cost ] || [ "$which" = all ]; then
  $PY -m mmtt.tools.reduction_cost --images ../shared/data/imagenet-samples --repeats 15 --threads 2 \
    --score-strides 4 8 --top-k 2 4 --dtypes float32 bfloat16 --json outputs/cost_s6.json 2>&1 | tee outputs/cost_s6.log
fi
