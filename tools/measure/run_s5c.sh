#!/bin/bash
# Run from the repository root, with nothing else running; figures go to outputs/.
# Session 5: the dense hosts with benchmark.py timing variants in interleaved rounds (quiet machine).
B=".venv/bin/python tools/benchmark.py --batch 1 --warmup 1 --repeats 3 --threads 2"
$B --config configs/segmenter/segmenter_tt_ade20k.py --sdpa-baseline --json outputs/bench5_seg_tt.json > outputs/bench5_seg_tt.log 2>&1
$B --config configs/segmenter/segmenter_hourglass_ade20k.py --sdpa-baseline --json outputs/bench5_seg_hg.json > outputs/bench5_seg_hg.log 2>&1
$B --config configs/dpt/dpt_tt_nyu.py --shape 480 640 --json outputs/bench5_dpt_tt.json > outputs/bench5_dpt_tt.log 2>&1
$B --config configs/dpt/dpt_hourglass_nyu.py --shape 480 640 --json outputs/bench5_dpt_hg.json > outputs/bench5_dpt_hg.log 2>&1
$B --config configs/dino/dino_tt_swin-l_coco.py --shape 800 1333 --part backbone --json outputs/bench5_dino_tt.json > outputs/bench5_dino_tt.log 2>&1
$B --config configs/dino/dino_hourglass_swin-l_coco.py --shape 800 1333 --part backbone --json outputs/bench5_dino_hg.json > outputs/bench5_dino_hg.log 2>&1
echo done > outputs/s5c_done
