"""GFLOPs of a config, unmodified beside mmtt: python tools/get_flops.py CONFIG [--shape H W]"""
from mmtt.tools.get_flops import main

if __name__ == '__main__':
    main()
