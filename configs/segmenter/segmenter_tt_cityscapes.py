# Segmenter-L/16 (mask head) on Cityscapes at 768x768 with Token Transforming, training-free.
# mmseg ships no Segmenter config for Cityscapes: this one is composed from mmseg's parts
# (the ViT-L of its ADE20K config, the Cityscapes 768x768 dataset, an 80k schedule).
#   python tools/test.py configs/segmenter/segmenter_tt_cityscapes.py CHECKPOINT
_base_ = [
    'mmseg::_base_/models/segmenter_vit-b16_mask.py',
    'mmseg::_base_/datasets/cityscapes_768x768.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)
crop_size = (768, 768)
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segmenter/vit_large_p16_384_20220308-d4efb41d.pth'  # noqa
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=checkpoint,
    backbone=dict(
        type='TokenVisionTransformer',
        img_size=crop_size,
        embed_dims=1024,
        num_layers=24,
        num_heads=16,
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        # 25.7% fewer GFLOPs at 768x768 (paper, Sec. 4.3: 25% lossless on Cityscapes).
        reduce_layers=(8, 16),
        token_recovery=dict(type='TokenRecovery')),
    decode_head=dict(
        in_channels=1024, channels=1024, num_heads=16, embed_dims=1024, num_classes=19),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0))
train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
