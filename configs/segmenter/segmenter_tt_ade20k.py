# Segmenter-L/16 (mask head) on ADE20K at 640x640 with Token Transforming, training-free.
# Evaluate an official mmseg checkpoint:
#   python tools/test.py configs/segmenter/segmenter_tt_ade20k.py CHECKPOINT
_base_ = ['mmseg::segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenVisionTransformer',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        # 33.7% fewer GFLOPs at 640x640, compression ops counted (paper: 30% lossless).
        reduce_layers=(6, 12, 18),
        token_recovery=dict(type='TokenRecovery')))
