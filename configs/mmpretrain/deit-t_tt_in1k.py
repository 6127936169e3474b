# DeiT-Ti/0.7, training-free, on mmpretrain's DeiT-Ti: 1.26 -> 0.83 GFLOPs at 224x224.
#   python tools/test.py configs/mmpretrain/deit-t_tt_in1k.py \
#     https://download.openmmlab.com/mmclassification/v0/deit/deit-tiny_pt-4xb256_in1k_20220218-13b382a0.pth
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenVisionTransformer',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        reduce_layers=(3, 6, 9)))
