# Segmenter-L Cityscapes, Token Transforming keeping 90% at each reduction (Fig. 4 sweep).
_base_ = ['./segmenter_tt_cityscapes.py']

model = dict(backbone=dict(token_transform=dict(keep_ratio=0.9)))
