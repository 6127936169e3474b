"""mmtt: training-free Token Transforming for OpenMMLab and timm vision transformers.

``custom_imports = dict(imports=['mmtt'])`` registers :class:`TokenTransform` and
:class:`TokenRecovery` in MMEngine's root ``MODELS`` registry.
"""
from importlib.util import find_spec

from .compat import check_versions

check_versions()

from . import _mim  # noqa: E402
from .modules import Reduction, TokenRecovery, TokenTransform  # noqa: E402
from .version import __version__  # noqa: E402

_mim.register()

# Host backbones register into their libraries' registries when those are installed.
if find_spec('mmseg') is not None:
    from .patch import mmseg_vit  # noqa: F401
    from . import models  # noqa: F401
if find_spec('mmdet') is not None:
    from .patch import mmdet_swin  # noqa: F401

__all__ = ['TokenTransform', 'TokenRecovery', 'Reduction', '__version__']
