"""ImageNet top-1/top-5, unmodified and with mmtt: python tools/test_timm.py --model NAME --data DIR"""
from mmtt.tools.test_timm import main

if __name__ == '__main__':
    main()
