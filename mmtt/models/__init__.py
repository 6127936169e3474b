"""The host backbones and task models mmtt registers in their host library's registries.

Imported by ``import mmtt`` for each host that is installed in a supported version: the
config-built backbones of :mod:`mmtt.hosts` (``mmseg``, ``mmdet``, ``mmpretrain``,
``mmpretrain_t2t``, ``mmpretrain_psvit``) and mmtt's own ``dpt`` (DPT-Hybrid monocular depth,
mmseg with timm's ResNet). A host outside its supported range is skipped here, and importing
its module directly raises an ``ImportError`` naming the versions.
"""
from ..compat import host_supported

# First: mmseg and mmdet import mmpretrain.models themselves (mmdet's ReID models), and
# hosts.mmpretrain imports it so that transformers >= 5 does not break that import.
if host_supported('mmpretrain'):
    from ..hosts import mmpretrain, mmpretrain_psvit, mmpretrain_t2t  # noqa: F401
if host_supported('mmseg'):
    from ..hosts import mmseg  # noqa: F401
    if host_supported('timm'):
        from . import dpt  # noqa: F401
if host_supported('mmdet'):
    from ..hosts import mmdet  # noqa: F401
