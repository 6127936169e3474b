"""Fine-tune with mmtt inserted: python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume]"""
from mmtt.tools.train import main

if __name__ == '__main__':
    main()
