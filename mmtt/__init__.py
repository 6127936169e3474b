"""mmtt: training-free Token Transforming for OpenMMLab and timm vision transformers.

``custom_imports = dict(imports=['mmtt'])`` registers :class:`TokenTransform` and
:class:`TokenRecovery` in MMEngine's root ``MODELS`` registry.
"""
from .modules import Reduction, TokenRecovery, TokenTransform
from .version import __version__

__all__ = ['TokenTransform', 'TokenRecovery', 'Reduction', '__version__']
