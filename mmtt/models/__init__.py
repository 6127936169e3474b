"""Backbones and task models built on mmtt, registered in their host library's registries.

Imported by ``import mmtt`` for each host that is installed in a supported version:
``backbones.vit`` (mmseg), ``backbones.swin`` (mmdet), ``backbones.mmpretrain_vit`` and
``backbones.mmpretrain_t2t``, ``backbones.mmpretrain_psvit`` (mmpretrain), ``dpt`` (DPT-Hybrid monocular depth, mmseg
with timm's ResNet). A host outside its supported range is skipped here, and importing its
module directly raises an ``ImportError`` naming the versions.
"""
from ..compat import host_supported

# First: mmseg and mmdet import mmpretrain.models themselves (mmdet's ReID models), and
# backbones.mmpretrain_vit imports it so that transformers >= 5 does not break that import.
if host_supported('mmpretrain'):
    from .backbones import mmpretrain_psvit, mmpretrain_t2t, mmpretrain_vit  # noqa: F401
if host_supported('mmseg'):
    from .backbones import vit  # noqa: F401
    if host_supported('timm'):
        from . import dpt  # noqa: F401
if host_supported('mmdet'):
    from .backbones import swin  # noqa: F401
