# ViT-B/16 AugReg (ImageNet-21k pre-trained, fine-tuned on ImageNet-1k at 384x384), training-free,
# with mmpretrain's checkpoint (converted from AugReg's B_16-i21k-300ep-...-res_384):
#   python tools/test.py configs/mmpretrain/vit-b16_tt_in1k-384px.py \
#     https://download.openmmlab.com/mmclassification/v0/vit/finetune/vit-base-p16_in21k-pre-3rdparty_ft-64xb64_in1k-384_20210928-98e8652b.pth
# The schedule of vit-b16_tt_in1k.py: 55.54 -> 35.70 GFLOPs at 384x384 (no paper row at 384).
_base_ = ['mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k-384px.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenVisionTransformer',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.69, kappa=0.55, tau=150.0),
        reduce_layers=(3, 6, 9)))
