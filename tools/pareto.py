"""Fidelity against measured speed, one curve per variant: python tools/pareto.py --images DIR"""
from mmtt.tools.pareto import main

if __name__ == '__main__':
    main()
