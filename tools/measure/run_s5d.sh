#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/.
# Session 5: lighter variants of mixed + score_stride against ToMe-hidden (quiet machine).
.venv/bin/python tools/pareto.py --images ../shared/data/imagenet-samples --limit 16 --size 448 --threads 2 --batch 2 --warmup 1 --repeats 7 --keep-ratios 0.5 0.7 0.9 --variants mixed03-s4=selection:mixed,kappa:0.3,recovery:share,top_k:4,score_stride:4 mixed03-s4-k2=selection:mixed,kappa:0.3,recovery:share,top_k:2,score_stride:4 mixed03-s8-k2=selection:mixed,kappa:0.3,recovery:share,top_k:2,score_stride:8 tome-hidden=method:tome,metric:hidden --out-json outputs/pareto_s5d_fp32.json --out-png outputs/pareto_s5d_fp32.png > outputs/pareto_s5d_fp32.log 2>&1
