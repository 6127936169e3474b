# Segmenter-L ADE20K with pruning under the same token schedule, for side-by-side runs.
_base_ = ['./segmenter_tt_ade20k.py']

model = dict(backbone=dict(token_transform=dict(method='prune')))
