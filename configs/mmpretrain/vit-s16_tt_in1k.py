# ViT-AugReg-S/16 at 224x224 (paper Table 1: 4.6 -> 2.7 GFLOPs), training-free: 4.61 -> 2.71.
# mmpretrain's 'deit-small' arch is ViT-S's (384 wide, 12 layers, 6 heads; its 'small' is the
# older 768-wide, 8-layer ViT-S). keep_ratio 0.62 after blocks 4, 7, 10 (1-based) is chosen to
# meet the paper's GFLOPs (ToMe's row; the schedule is not given). mmpretrain ships no AugReg-S
# checkpoint: bring timm's vit_small_patch16_224.augreg_in21k_ft_in1k in mmpretrain's layout.
_base_ = ['./vit-b16_tt_in1k.py']

model = dict(
    backbone=dict(arch='deit-small', token_transform=dict(keep_ratio=0.62)),
    head=dict(in_channels=384))
