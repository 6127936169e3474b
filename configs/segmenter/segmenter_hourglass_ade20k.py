# Segmenter-L ADE20K with Hourglass (Liang et al., NeurIPS 2022), training-free, at the authors'
# operating point (Expedit-Segmenter configs/segmenter_hourglass_vit/
# segmenter-hourglass-vit-l16_640x640_160k_ade20k.py, README: alpha 10, 28 x 28, 443.84 GFLOPs):
# the 40 x 40 token grid clustered to 28 x 28 (keep_ratio 0.49 = (28 / 40) ** 2; 5 soft k-means
# rounds, 5 x 5 neighbourhood, temperature 0.02) after layer 9, and every token rebuilt from its
# 20 nearest clusters (temperature 0.02) before the output.
# Two differences from Expedit's code: mmtt reduces between layer 9's attention and its FFN
# (Fig. 3; Expedit clusters after the whole layer), and rebuilds the backbone's tokens before the
# decode head (Expedit rebuilds the head's logits), which the mask head needs as a full grid.
_base_ = ['./segmenter_tt_ade20k.py']

model = dict(
    backbone=dict(
        token_transform=dict(method='hourglass', keep_ratio=0.49),
        reduce_layers=(9,),
        token_recovery=dict(type='TokenRecovery', mode='reconstruct', k=20, temperature=0.02)))
