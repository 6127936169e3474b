"""The paper's Fig. 5 on a real pretrained ViT: python tools/visualize.py [--image PHOTO] [--out PNG]"""
from mmtt.tools.visualize import main

if __name__ == '__main__':
    main()
