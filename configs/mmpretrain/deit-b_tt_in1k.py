# DeiT-B/0.7, training-free, on mmpretrain's DeiT-B: 17.58 -> 11.51 GFLOPs at 224x224.
#   python tools/test.py configs/mmpretrain/deit-b_tt_in1k.py \
#     https://download.openmmlab.com/mmclassification/v0/deit/deit-base_3rdparty_pt-16xb64_in1k_20211124-6f40c188.pth
_base_ = ['mmpretrain::deit/deit-base_16xb64_in1k.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenVisionTransformer',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        reduce_layers=(3, 6, 9)))
