"""PS-ViT (:mod:`mmtt.models.psvit`) as an mmpretrain backbone, with Token Transforming.

mmpretrain has no PS-ViT: :class:`TokenPSViT` is mmtt's PyTorch model without its head,
registered in mmpretrain's ``MODELS``, for an ``ImageClassifier`` with a ``LinearClsHead``.
The authors' checkpoints load after :func:`mmtt.models.psvit.convert_to_mmpretrain`
(``backbone.*``, ``head.fc.*``).
"""
# First: it checks the versions and imports mmpretrain.models (see its _import_mmpretrain_models).
from . import mmpretrain  # noqa: F401

__all__ = ['TokenPSViT']

from mmpretrain.registry import MODELS
from torch import Tensor

from ..models.psvit import PSViT


@MODELS.register_module()
class TokenPSViT(PSViT):
    """PS-ViT backbone: ``forward`` returns a one-tuple of ``out_type`` features (``[B, C]``
    class token after the norm by default).

    Args:
        token_transform, reduce_layers, token_recovery, metric, out_type: as
            :class:`~mmtt.models.psvit.PSViT`; ``reduce_layers`` count the plain transformer
            layers after the sampling iterations, 0-based.
        init_cfg: accepted for mmpretrain's configs; the weights come from a checkpoint.
        **kwargs: :class:`~mmtt.models.psvit.PSViT` arguments (the PS-ViT-B/14 ones by default).
    """

    def __init__(self, init_cfg=None, **kwargs) -> None:
        if 'num_classes' in kwargs:
            raise ValueError('num_classes is the head\'s setting: give it to the LinearClsHead')
        super().__init__(num_classes=0, **kwargs)   # the head is mmpretrain's LinearClsHead

    def forward(self, x: Tensor) -> tuple:
        return (self.forward_features(x),)
