# DeiT-S/0.7 (paper Table 1: 4.6 -> 3.0 GFLOPs), training-free, on mmpretrain's DeiT-S.
# Evaluate mmpretrain's checkpoint on your ImageNet copy (data/imagenet/val + meta/val.txt):
#   python tools/test.py configs/mmpretrain/deit-s_tt_in1k.py \
#     https://download.openmmlab.com/mmclassification/v0/deit/deit-small_pt-4xb256_in1k_20220218-9425b9bb.pth
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenVisionTransformer',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        # After the attention of blocks 4, 7, 10 (1-based): 4.61 -> 3.02 GFLOPs at 224x224.
        reduce_layers=(3, 6, 9)))
