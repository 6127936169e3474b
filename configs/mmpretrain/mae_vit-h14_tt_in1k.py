# MAE ViT-H/14, fine-tuned on ImageNet-1k (paper Table 1: 167.4 -> 92.9 GFLOPs), training-free:
# 167.40 -> 92.92 GFLOPs at 224x224. keep_ratio 0.633 after blocks 8, 16, 24 (1-based) is chosen
# to meet the paper's GFLOPs (ToMe's row; the schedule is not given). Average pooling
# (out_type='avg_featmap') counts each reduced token `size` times.
#   python tools/test.py configs/mmpretrain/mae_vit-h14_tt_in1k.py \
#     https://download.openmmlab.com/mmselfsup/1.x/mae/mae_vit-huge-p16_8xb512-fp16-coslr-1600e_in1k/vit-huge-p16_ft-8xb128-coslr-50e_in1k/vit-huge-p16_ft-8xb128-coslr-50e_in1k_20220916-0bfc9bfd.pth
_base_ = ['mmpretrain::mae/benchmarks/vit-huge-p14_8xb128-coslr-50e_in1k.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenVisionTransformer',
        # The fine-tuned checkpoint is loaded whole (tools/test.py CHECKPOINT), not as a
        # pre-trained backbone from the base's empty path.
        init_cfg=None,
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.633, kappa=0.55, tau=150.0),
        reduce_layers=(7, 15, 23)))
