"""Convert an official DPT-Hybrid checkpoint: python tools/convert_dpt_checkpoint.py SRC DST"""
from mmtt.tools.convert_dpt_checkpoint import main

if __name__ == '__main__':
    main()
