# Flagship config, kept at the top of configs/ so that these work as written:
#   python tools/test.py configs/dino_tt_swin-l_coco.py CHECKPOINT
#   _base_ = ['mmtt::dino_tt_swin-l_coco.py']          (in a downstream project's config)
# It is configs/dino/dino_tt_swin-l_coco.py; edit that one (see configs/dino/README.md).
_base_ = ['./dino/dino_tt_swin-l_coco.py']
