# Flagship config, kept at the top of configs/ so that these work as written:
#   python tools/test.py configs/segmenter_tt_ade20k.py CHECKPOINT
#   _base_ = ['mmtt::segmenter_tt_ade20k.py']          (in a downstream project's config)
# It is configs/segmenter/segmenter_tt_ade20k.py; edit that one (see configs/segmenter/README.md).
_base_ = ['./segmenter/segmenter_tt_ade20k.py']
