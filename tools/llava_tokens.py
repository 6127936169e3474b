"""LLaVA-1.5 visual tokens, LLM input length and encoder GFLOPs: python tools/llava_tokens.py --preset llava-1.5/32"""
from mmtt.tools.llava_tokens import main

if __name__ == '__main__':
    main()
