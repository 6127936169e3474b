# Segmenter-L ADE20K with ToMe bipartite merging under the same token schedule, for side-by-side runs.
_base_ = ['./segmenter_tt_ade20k.py']

model = dict(backbone=dict(token_transform=dict(method='tome')))
