# Segmenter-L Cityscapes with EViT-style fusion under the same token schedule, for side-by-side runs.
_base_ = ['./segmenter_tt_cityscapes.py']

model = dict(backbone=dict(token_transform=dict(method='evit')))
