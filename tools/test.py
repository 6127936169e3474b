"""Test (and evaluate) an mmseg or mmdet config with mmtt, e.g.

    python tools/test.py configs/segmenter/segmenter_tt_ade20k.py CHECKPOINT [--work-dir DIR] [--out DIR]
"""
from mmtt.tools.test import main

if __name__ == '__main__':
    main()
