#!/bin/bash
# Run from the repository root; figures go to outputs/. Session 6: schedules for light budgets
# (one or two reductions instead of three; ToMe after every block, as ToMe is usually run).
# Fidelity only (one timing round, unused); the finalists are timed by run_s6_light.sh.
set -e
PY=${PY:-.venv/bin/python}
S=selection:mixed,kappa:0.3,recovery:share,top_k:2,score_stride:8
COMMON="--images ../shared/data/imagenet-samples --limit 16 --size 448 --threads 2 --batch 4 --warmup 0 --repeats 1"
$PY tools/pareto.py $COMMON --keep-ratios 0.6 0.7 0.8 0.85 0.9 --variants s-l3=$S,layers:3 s-l36=$S,layers:3-6 \
  s-l369=$S tome-hidden=method:tome,metric:hidden tome-hidden-l3=method:tome,metric:hidden,layers:3 \
  --out-json outputs/probe_s6_sched.json --out-png outputs/probe_s6_sched.png 2>&1 | grep -v fwd/s
$PY tools/pareto.py $COMMON --keep-ratios 0.9 0.93 0.95 0.97 --variants \
  tome-hidden-all=method:tome,metric:hidden,layers:1-2-3-4-5-6-7-8-9-10-11 \
  tome-all=method:tome,layers:1-2-3-4-5-6-7-8-9-10-11 \
  --out-json outputs/probe_s6_sched_all.json --out-png outputs/probe_s6_sched_all.png 2>&1 | grep -v fwd/s
# Schedules toward IoU >= 0.90 at >= x1.8 (mixed, score_stride 4, top_k 4): two, three and four
# reductions, earlier blocks, tau 75 / 300; keep 0.4-0.6.
S4=selection:mixed,kappa:0.3,recovery:share,top_k:4,score_stride:4
$PY tools/pareto.py $COMMON --keep-ratios 0.4 0.45 0.5 0.55 0.6 --variants m369=$S4 m258=$S4,layers:2-5-8 \
  m3579=$S4,layers:3-5-7-9 m2468=$S4,layers:2-4-6-8 m36=$S4,layers:3-6 m369-t300=$S4,tau:300 m369-t75=$S4,tau:75 \
  --out-json outputs/probe_s6_x18.json --out-png outputs/probe_s6_x18.png 2>&1 | grep -v fwd/s
