# Segmenter-L Cityscapes with ToMe bipartite merging under the same token schedule, for side-by-side runs.
_base_ = ['./segmenter_tt_cityscapes.py']

model = dict(backbone=dict(token_transform=dict(method='tome')))
