"""Choose the reduction setting for your model, images and hardware, without labels:
python tools/tune.py CONFIG CHECKPOINT --images DIR --target-speedup 1.4"""
from mmtt.tools.tune import main

if __name__ == '__main__':
    main()
