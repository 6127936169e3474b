"""DPT (Ranftl et al., 2021) monocular depth in mmseg, with Token Transforming in its ViT.

Importing this package registers in mmseg's registries: the backbone
:class:`TokenHybridVisionTransformer` (ResNet-50 + ViT-B/16, DPT-Hybrid), the decode head
:class:`DPTDepthHead`, the losses :class:`ScaleShiftInvariantLoss` and
:class:`GradientMatchingLoss`, and the metric :class:`BTSDepthMetric`. mmseg's
``DepthEstimator``, ``NYUDataset`` and ``SiLogLoss`` complete the model.
"""
from .backbone import HybridPatchEmbed, TokenHybridVisionTransformer
from .convert import convert_dpt_key, convert_dpt_state_dict
from .head import DepthFusionBlock, DPTDepthHead, HybridReassembleBlocks, ResidualConvUnit
from .losses import GradientMatchingLoss, ScaleShiftInvariantLoss
from .metric import BTSDepthMetric

__all__ = ['TokenHybridVisionTransformer', 'HybridPatchEmbed', 'DPTDepthHead',
           'HybridReassembleBlocks', 'DepthFusionBlock', 'ResidualConvUnit',
           'ScaleShiftInvariantLoss', 'GradientMatchingLoss', 'BTSDepthMetric',
           'convert_dpt_key', 'convert_dpt_state_dict']
