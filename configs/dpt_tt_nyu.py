# Flagship config, kept at the top of configs/ so that these work as written:
#   python tools/test.py configs/dpt_tt_nyu.py CHECKPOINT
#   _base_ = ['mmtt::dpt_tt_nyu.py']          (in a downstream project's config)
# It is configs/dpt/dpt_tt_nyu.py; edit that one (see configs/dpt/README.md).
_base_ = ['./dpt/dpt_tt_nyu.py']
