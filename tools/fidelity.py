"""Fidelity against GFLOPs on a real pretrained ViT (Fig. 4): python tools/fidelity.py --images DIR"""
from mmtt.tools.fidelity import main

if __name__ == '__main__':
    main()
