# ViT-AugReg-B/16 at 224x224 (paper Table 1: 17.6 -> 11.4 GFLOPs), training-free: 17.59 -> 11.34.
# keep_ratio 0.69 after blocks 4, 7, 10 (1-based) is chosen to meet the paper's GFLOPs (its
# schedule is not given). mmpretrain ships no 224x224 AugReg-B checkpoint: bring
# timm's vit_base_patch16_224.augreg_in21k_ft_in1k in mmpretrain's key layout.
_base_ = ['./vit-b16_tt_in1k-384px.py']

model = dict(backbone=dict(img_size=224))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    # AugReg's evaluation: crop 0.9 of the short side, bicubic.
    dict(type='ResizeEdge', scale=248, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
