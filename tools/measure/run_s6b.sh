#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/ (the plots the
# README shows are redrawn into docs/ with --from-json). Session 6, after anchor=True and
# distinct_stride: the documented Token Transforming settings against every peer, one run per
# precision and size, batch 1 latency and batch 4 time.
# Usage: tools/measure/run_s6b.sh [fp32|bf16|224|cost|all] [extra pareto.py arguments]
set -e
which=${1:-all}; shift || true
PY=${PY:-.venv/bin/python}
COMMON="--images ../shared/data/imagenet-samples --limit 16 --threads 2 --batch 4 --warmup 1 --keep-ratios 0.5 0.7 0.9"
PEERS="tome=method:tome tome-hidden=method:tome,metric:hidden prune=method:prune evit=method:evit tps=method:tps pitome=method:pitome"
MIXED=selection:mixed,kappa:0.3,recovery:share
# float32: strided eq. 2 scores pay (exact ones cost 4-5 ms a reduction beyond SDPA here)
FP32="tt=method:transform tt-anchor=method:transform,anchor:true,top_k:2,score_stride:8,recovery:share
  mixed03-s8-k2=$MIXED,top_k:2,score_stride:8 mixed-anchor=$MIXED,top_k:2,score_stride:8,anchor:true,distinct_stride:4"
# bfloat16: exact eq. 2 scores cost about what SDPA does, so no score_stride
BF16="tt=method:transform tt-anchor=method:transform,anchor:true,top_k:2,recovery:share
  mixed03-s4=$MIXED,top_k:4,score_stride:4 mixed-anchor=$MIXED,top_k:2,anchor:true,distinct_stride:4"
if [ "$which" = fp32 ] || [ "$which" = all ]; then
  $PY tools/pareto.py $COMMON --size 448 --repeats 11 --variants $FP32 $PEERS \
    --out-json outputs/pareto_s6b_fp32.json --out-png outputs/pareto_s6b_fp32.png "$@" 2>&1 | tee outputs/pareto_s6b_fp32.log
fi
if [ "$which" = bf16 ] || [ "$which" = all ]; then
  $PY tools/pareto.py $COMMON --size 448 --repeats 9 --dtype bfloat16 --variants $BF16 $PEERS \
    --out-json outputs/pareto_s6b_bf16.json --out-png outputs/pareto_s6b_bf16.png "$@" 2>&1 | tee outputs/pareto_s6b_bf16.log
fi
if [ "$which" = 224 ] || [ "$which" = all ]; then
  $PY tools/pareto.py $COMMON --size 224 --repeats 11 --variants $FP32 $PEERS \
    --out-json outputs/pareto_s6b_224.json --out-png outputs/pareto_s6b_224.png "$@" 2>&1 | tee outputs/pareto_s6b_224.log
fi
if [ "$which" = cost ] || [ "$which" = all ]; then
  $PY -m mmtt.tools.reduction_cost --images ../shared/data/imagenet-samples --repeats 15 --threads 2 \
    --score-strides 8 --top-k 2 --dtypes float32 bfloat16 --kappa 0.3 --mixed --anchor --distinct-stride 4 \
    --json outputs/cost_s6b.json 2>&1 | tee outputs/cost_s6b.log
fi
