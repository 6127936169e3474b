# DeiT-S/0.6 (paper Table 1: 4.6 -> 2.6 GFLOPs), training-free: 4.61 -> 2.64 GFLOPs at 224x224.
_base_ = ['./deit-s_tt_in1k.py']

model = dict(backbone=dict(token_transform=dict(keep_ratio=0.6)))
