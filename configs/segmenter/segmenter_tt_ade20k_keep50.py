# Segmenter-L ADE20K, Token Transforming keeping 50% at each reduction (Fig. 4 sweep).
_base_ = ['./segmenter_tt_ade20k.py']

model = dict(backbone=dict(token_transform=dict(keep_ratio=0.5)))
