# DeiT-S distilled/0.7, training-free; the class and distillation tokens are never reduced.
#   python tools/test.py configs/mmpretrain/deit-s-distilled_tt_in1k.py \
#     https://download.openmmlab.com/mmclassification/v0/deit/deit-small-distilled_3rdparty_pt-4xb256_in1k_20211216-4de1d725.pth
_base_ = ['mmpretrain::deit/deit-small-distilled_4xb256_in1k.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenDistilledVisionTransformer',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        reduce_layers=(3, 6, 9)))
