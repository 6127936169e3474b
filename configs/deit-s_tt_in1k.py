# Flagship config, kept at the top of configs/ so that these work as written:
#   python tools/test.py configs/deit-s_tt_in1k.py CHECKPOINT
#   _base_ = ['mmtt::deit-s_tt_in1k.py']          (in a downstream project's config)
# It is configs/mmpretrain/deit-s_tt_in1k.py; edit that one (see configs/mmpretrain/README.md).
_base_ = ['./mmpretrain/deit-s_tt_in1k.py']
