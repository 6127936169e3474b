"""Token Transforming in mmpretrain's ``T2T_ViT`` (Tokens-to-Token ViT, paper Table 2).

The reduction happens in the ViT encoder after the Tokens-to-Token module (whose soft splits
need the full grid), between the attention and the FFN of chosen encoder layers; the class
token is never reduced. Parameters and buffers are exactly mmpretrain's.
"""
from typing import Optional, Sequence, Tuple

# First: it checks the versions and imports mmpretrain.models (see its _import_mmpretrain_models).
from .mmpretrain import TokenBackboneMixin, TokenEncoderLayerMixin

__all__ = ['TokenT2TLayer', 'TokenT2T_ViT']

import torch
from mmpretrain.models.backbones.t2t_vit import T2T_ViT, T2TTransformerLayer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS
from torch import Tensor


class TokenT2TLayer(TokenEncoderLayerMixin, T2TTransformerLayer):
    """mmpretrain's ``T2TTransformerLayer`` with :class:`TokenEncoderLayerMixin`."""


@MODELS.register_module()
class TokenT2T_ViT(TokenBackboneMixin, T2T_ViT):
    """mmpretrain ``T2T_ViT`` with Token Transforming inserted by config.

    Args:
        token_transform, reduce_layers, token_recovery, metric: as
            :class:`~mmtt.hosts.mmpretrain.TokenVisionTransformer`; the layer
            indices count the encoder's layers (``num_layers``), 0-based.
        **kwargs: mmpretrain ``T2T_ViT`` arguments, unchanged.
    """
    _layers_attr = 'encoder'
    _layer_class = TokenT2TLayer

    def __init__(self, token_transform: Optional[dict] = None, reduce_layers: Sequence[int] = (),
                 token_recovery: Optional[dict] = None, metric: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._insert_reduction(token_transform, reduce_layers, token_recovery, metric)

    def _embed(self, x: Tensor) -> Tuple[Tensor, tuple]:
        # mmpretrain's T2T_ViT.forward up to the encoder.
        x, patch_resolution = self.tokens_to_token(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, patch_resolution,
                                 mode=self.interpolate_mode, num_extra_tokens=self.num_extra_tokens)
        return self.drop_after_pos(x), patch_resolution

    def _final_norm(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.final_norm else x

    def _pool(self, pooled: Tensor) -> Tensor:
        return pooled   # T2T's avg_featmap has no norm after the mean
