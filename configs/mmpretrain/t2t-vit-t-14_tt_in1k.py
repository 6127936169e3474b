# T2T-ViT-t-14 (paper Table 2: T2T-ViT-14, 4.8 -> 3.1 GFLOPs), training-free, on mmpretrain's
# T2T-ViT-t-14: 6.11 -> 4.34 GFLOPs at 224x224. The paper's 4.8 is the Performer T2T-ViT-14,
# which mmpretrain does not implement; mmpretrain's has a transformer T2T module (1.6 GFLOPs
# more). The reduction is in the encoder, after the attention of layers 4, 7, 10 (1-based) of 14:
# it saves 1.77 GFLOPs, the paper 1.7.
#   python tools/test.py configs/mmpretrain/t2t-vit-t-14_tt_in1k.py \
#     https://download.openmmlab.com/mmclassification/v0/t2t-vit/t2t-vit-t-14_8xb64_in1k_20211220-f7378dd5.pth
_base_ = ['mmpretrain::t2t_vit/t2t-vit-t-14_8xb64_in1k.py']
custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='TokenT2T_ViT',
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        reduce_layers=(3, 6, 9)))
