"""Benchmark mmtt against the unmodified model: python tools/benchmark.py --model NAME | --config CFG"""
from mmtt.tools.benchmark import main

if __name__ == '__main__':
    main()
