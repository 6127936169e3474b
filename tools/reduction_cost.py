"""One reduction, step by step, timed: python tools/reduction_cost.py --images DIR"""
from mmtt.tools.reduction_cost import main

if __name__ == '__main__':
    main()
