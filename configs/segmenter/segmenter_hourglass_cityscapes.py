# Segmenter-L Cityscapes with Hourglass (Liang et al., NeurIPS 2022), training-free, at the
# authors' operating point (Expedit-Segmenter configs/segmenter_hourglass_vit/
# segmenter-hourglass-vit-l16_768x768_80k_cityscapes.py, README: alpha 12, 32 x 32, 691.0 GFLOPs):
# the 48 x 48 token grid of each 768 x 768 window clustered to 32 x 32 (keep_ratio 0.4444, about
# (32 / 48) ** 2; 5 soft k-means rounds, 5 x 5 neighbourhood, temperature 0.02) after layer 11,
# and every token rebuilt from its 20 nearest clusters (temperature 0.02) before the output.
# As in segmenter_hourglass_ade20k.py, mmtt reduces between the layer's attention and its FFN and
# rebuilds the backbone's tokens (Expedit: after the whole layer, and the head's logits).
_base_ = ['./segmenter_tt_cityscapes.py']

model = dict(
    backbone=dict(
        token_transform=dict(method='hourglass', keep_ratio=0.4444),
        reduce_layers=(11,),
        token_recovery=dict(type='TokenRecovery', mode='reconstruct', k=20, temperature=0.02)))
