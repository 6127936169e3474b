# DeiT-S with ToMe's bipartite merging (keys as the similarity metric, as ToMe) under the /0.7
# schedule of deit-s_tt_in1k.py, for side-by-side runs.
_base_ = ['./deit-s_tt_in1k.py']

model = dict(backbone=dict(token_transform=dict(method='tome'), metric='keys'))
