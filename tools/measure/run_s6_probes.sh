#!/bin/bash
# Run from the repository root; figures go to outputs/. Session 6: fidelity of anchor=True and
# of distinct_stride before they were recommended (fidelity only: one timing round, unused).
set -e
PY=${PY:-.venv/bin/python}
COMMON="--images ../shared/data/imagenet-samples --limit 16 --size 448 --threads 2 --batch 4 --warmup 0 --repeats 1 --keep-ratios 0.5 0.7 0.9"
M=selection:mixed,kappa:0.3,recovery:share,top_k:2,score_stride:8
# anchor=True against the paper's W: the paper's selection (dense, and top_k=4 with score_stride=8) and mixed
$PY tools/pareto.py $COMMON --variants tt=recovery:share tt-anchor=recovery:share,anchor:true \
  k4=recovery:share,top_k:4,score_stride:8 k4-anchor=recovery:share,top_k:4,score_stride:8,anchor:true \
  mixed=$M mixed-anchor=$M,anchor:true \
  --out-json outputs/probe_s6_anchor.json --out-png outputs/probe_s6_anchor.png 2>&1 | grep -v fwd/s
# distinct_stride with mixed + anchor
$PY tools/pareto.py $COMMON --variants ds1=$M,anchor:true ds2=$M,anchor:true,distinct_stride:2 \
  ds4=$M,anchor:true,distinct_stride:4 ds8=$M,anchor:true,distinct_stride:8 \
  --out-json outputs/probe_s6_dstride.json --out-png outputs/probe_s6_dstride.png 2>&1 | grep -v fwd/s
