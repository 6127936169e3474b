# DPT-Hybrid on NYUv2 with Token Transforming in its ViT, training-free (paper Table 3:
# 280 -> 200 GFLOPs, AbsRel 0.110 -> 0.108). Tokens are recovered before the reassemble taps
# at ViT layers 8 and 11; the ResNet taps are untouched.
#   python tools/test.py configs/dpt/dpt_tt_nyu.py dpt_hybrid_nyu_mmtt.pth
_base_ = ['./dpt_nyu.py']

model = dict(
    backbone=dict(
        token_transform=dict(
            type='TokenTransform', method='transform', keep_ratio=0.7, kappa=0.55, tau=150.0),
        # 0.7 of the tokens kept at each of five layers after the first: 198.9 GFLOPs at
        # 480x640, 29.0% fewer than 280.3, compression ops counted (paper: 280 -> 200).
        reduce_layers=(1, 2, 3, 4, 5),
        token_recovery=dict(type='TokenRecovery')))
