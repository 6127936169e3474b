# Segmenter-L ADE20K with ToMe bipartite merging under the same token schedule, for side-by-side runs.
_base_ = ['./segmenter_tt_ade20k.py']

# ToMe compares the layer's hidden states here (metric='hidden', the features the paper's
# Segmenter comparison merges); metric='keys' compares head-averaged keys, as ToMe's own code.
model = dict(backbone=dict(token_transform=dict(method='tome'), metric='hidden'))
