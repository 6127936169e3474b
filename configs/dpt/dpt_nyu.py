# DPT-Hybrid (ResNet-50 + ViT-B/16) monocular depth on NYUv2, unmodified: the baseline of the
# paper's Table 3 (AbsRel 0.110). Evaluate the official weights, converted once:
#   python tools/convert_dpt_checkpoint.py dpt_hybrid_nyu-2ce69ec7.pt dpt_hybrid_nyu_mmtt.pth
#   python tools/test.py configs/dpt/dpt_nyu.py dpt_hybrid_nyu_mmtt.pth
_base_ = [
    'mmseg::_base_/datasets/nyu.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_25k.py'
]
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

# _scope_: mmseg's registries, also when this file is inherited as an mmtt:: base (MMEngine
# would give the dicts defined here mmtt's scope, which has no registry of its own).
model = dict(
    _scope_='mmseg',
    type='DepthEstimator',
    # DPT normalises RGB to [-1, 1]; training batches are padded to multiples of 32 (DPT's
    # decoder halves the 1/16 grid once), padded depth 0 = invalid for the losses.
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True, pad_val=0, seg_pad_val=0, size_divisor=32),
    pretrained=None,
    backbone=dict(
        type='TokenHybridVisionTransformer',
        resnet_layers=(3, 4, 9),
        resnet_out_indices=(0, 1),
        img_size=384,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        out_indices=(8, 11),
        reduce_layers=[]),
    decode_head=dict(
        type='DPTDepthHead',
        embed_dims=768,
        post_process_channels=(256, 512, 768, 768),
        cnn_taps=(0, 1),
        readout_type='project',
        channels=256,
        # dpt_hybrid_nyu's inverse-depth -> metres mapping.
        invert=True, scale=0.000305, shift=0.1378,
        loss_decode=[dict(type='SiLogLoss'), dict(type='GradientMatchingLoss', loss_weight=0.5)]),
    # NYU test images are 480x640, multiples of 32 as DPT's decoder wants; whole-image
    # inference ignores crop_size, which only sets the default input of get_flops/benchmark.
    test_cfg=dict(mode='whole', crop_size=(480, 640)))

# mmseg's NYU training pipeline without Albu (albumentations is not an mmseg dependency).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='RandomDepthMix', prob=0.25),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomCrop', crop_size=(480, 480)),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs',
         meta_keys=('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                    'scale_factor', 'flip', 'flip_direction', 'category_id')),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

# The nine metrics of Table 3, SILog as the table (x100); --out PNGs in millimetres, as NYU's.
val_evaluator = dict(_scope_='mmseg', type='BTSDepthMetric', depth_scale_factor=1000.0)
test_evaluator = val_evaluator

# Fine-tuning (optional: the method is training-free): the pretrained backbone slower.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-5, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'decode_head': dict(lr_mult=10.0)}))
default_hooks = dict(checkpoint=dict(save_best='abs_rel', rule='less', max_keep_ckpts=1))
