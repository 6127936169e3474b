# DINO 5-scale Swin-L (36-epoch schedule) on COCO with Token Transforming, training-free.
# The backbone delta is that of configs/dino/dino_tt_swin-l_coco.py (a test keeps them equal).
#   python tools/test.py configs/dino/dino_tt_swin-l_coco_36e.py CHECKPOINT
_base_ = ['mmdet::dino/dino-5scale_swin-l_8xb2-36e_coco.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenSwinTransformer',
        token_transform=dict(type='TokenTransform', method='transform', kappa=0.55, tau=150.0),
        reduce_layers=[5],
        reduced_window_size=7,
        token_recovery=dict(type='TokenRecovery')))
