#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/.
# Session 5: the Pareto runs with Hourglass and five-reduction schedules (README, timm section).
P=".venv/bin/python tools/pareto.py --images ../shared/data/imagenet-samples --limit 16 --threads 2 --batch 2 --warmup 1 --keep-ratios 0.5 0.7 0.9"
V="tt=method:transform mixed03-fast=selection:mixed,kappa:0.3,recovery:share,top_k:4 tome-hidden=method:tome,metric:hidden tps=method:tps hourglass=method:hourglass,recovery:reconstruct,cluster_temperature:100,recovery_temperature:10 hourglass-once=method:hourglass,recovery:reconstruct,cluster_temperature:100,recovery_temperature:10,layers:3 mixed03-fast-5=selection:mixed,kappa:0.3,recovery:share,top_k:4,layers:2-4-6-8-10 tome-hidden-5=method:tome,metric:hidden,layers:2-4-6-8-10"
$P --size 448 --repeats 5 --variants $V --out-json outputs/pareto_s5_fp32.json --out-png outputs/pareto_s5_fp32.png > outputs/pareto_s5_fp32.log 2>&1
$P --size 224 --repeats 7 --variants $V --out-json outputs/pareto_s5_224.json --out-png outputs/pareto_s5_224.png > outputs/pareto_s5_224.log 2>&1
echo done > outputs/s5_done
