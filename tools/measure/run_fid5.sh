#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/.
# README fidelity table, re-run in session 5 (the counter now counts eq. 9's distances).
F=".venv/bin/python -m mmtt.tools.fidelity --images ../shared/data/imagenet-samples --limit 32 --size 448 --keep-ratios 0.7 0.5 --layers 3 6 9"
$F --methods transform prune --out-json outputs/fid5_tt_prune.json > outputs/fid5_tt_prune.log 2>&1
$F --methods tome --out-json outputs/fid5_tome.json > outputs/fid5_tome.log 2>&1
$F --methods tome --metric hidden --out-json outputs/fid5_tome_hidden.json > outputs/fid5_tome_hidden.log 2>&1
$F --methods transform --selection mixed --kappa 0.3 --out-json outputs/fid5_mixed.json > outputs/fid5_mixed.log 2>&1
$F --methods transform --top-k 8 --out-json outputs/fid5_k8.json > outputs/fid5_k8.log 2>&1
$F --methods transform --top-k 8 --selection mixed --kappa 0.3 --out-json outputs/fid5_k8_mixed.json > outputs/fid5_k8_mixed.log 2>&1
echo done > outputs/fid5_done
