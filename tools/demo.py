"""Token Transforming on a real pretrained ViT, what it saved and kept: python tools/demo.py (make demo)"""
from mmtt.tools.demo import main

if __name__ == '__main__':
    main()
