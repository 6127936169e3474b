"""mmtt: training-free Token Transforming for OpenMMLab and timm vision transformers.

``custom_imports = dict(imports=['mmtt'])`` registers :class:`TokenTransform` and
:class:`TokenRecovery` in MMEngine's root ``MODELS`` registry, and mmtt's backbones in the
registries of the installed OpenMMLab hosts (each host's versions are checked by its own
module, so a host outside the supported range does not stop the others).
"""
from .compat import check_versions

check_versions()

from . import _mim, models  # noqa: F401
from .modules import Reduction, TokenRecovery, TokenTransform
from .modules.host import remove_patch
from .version import __version__

_mim.register()

__all__ = ['TokenTransform', 'TokenRecovery', 'Reduction', 'remove_patch', '__version__']
