"""Task models built on mmtt's backbones, registered in their host library's registries.

``mmtt.models.dpt``: DPT-Hybrid monocular depth (mmseg; its ResNet comes from timm), imported
when both are installed.
"""
from importlib.util import find_spec

if find_spec('mmseg') is not None and find_spec('timm') is not None:
    from . import dpt  # noqa: F401
