#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/.
# Session 5: mixed selection's score stride, kappa and top_k (fidelity only; one round, its timings unused).
P=".venv/bin/python tools/pareto.py --images ../shared/data/imagenet-samples --limit 16 --size 448 --threads 2 --batch 2 --warmup 0 --repeats 1 --keep-ratios 0.5 0.7 0.9"
$P --variants m-s1=selection:mixed,kappa:0.3,recovery:share,top_k:4 m-s4=selection:mixed,kappa:0.3,recovery:share,top_k:4,score_stride:4 m-s16=selection:mixed,kappa:0.3,recovery:share,top_k:4,score_stride:16 m-s64=selection:mixed,kappa:0.3,recovery:share,top_k:4,score_stride:64 m-cls=selection:cls,kappa:0.3,recovery:share,top_k:4 --out-json outputs/probe_stride.json --out-png outputs/probe_stride.png
$P --variants k2=selection:mixed,kappa:0.2,recovery:share,top_k:4,score_stride:4 k4=selection:mixed,kappa:0.4,recovery:share,top_k:4,score_stride:4 tk2=selection:mixed,kappa:0.3,recovery:share,top_k:2,score_stride:4 s8=selection:mixed,kappa:0.3,recovery:share,top_k:4,score_stride:8 --out-json outputs/probe_k.json --out-png outputs/probe_k.png
