"""Regenerate model-index.yml and configs/*/metafile.yml from the configs: python tools/update_metafile.py"""
from mmtt.tools.update_metafile import main

if __name__ == '__main__':
    main()
