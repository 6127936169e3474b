# PS-ViT-B/14 unmodified (paper Table 2: 5.4 GFLOPs, top-1 81.7): the Token Transforming config
# with no layer reducing, for the baseline with the same weights and pipeline.
#   python tools/test.py configs/mmpretrain/ps-vit-b14_in1k.py CHECKPOINT
_base_ = ['./ps-vit-b14_tt_in1k.py']

model = dict(backbone=dict(reduce_layers=[]))
