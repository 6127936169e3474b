"""Token Transforming for LV-ViT (Token Labeling, paper Table 2), from PyPI's ``tlt`` 0.2.0.

``tlt`` (``tlt.models.lvvit``, the LV-ViT authors' model code) imports against timm 1.0 through
timm's deprecated import paths (``timm.models.layers`` and so on, each a ``FutureWarning``,
silenced here). Its models register in timm's registry (``timm.create_model('lvvit_s')``).

:func:`apply_patch` works like :func:`mmtt.hosts.timm.apply_patch`: it swaps classes in place
(``module.__class__``), adds no parameters, keeps the state dict's keys, and
:func:`remove_patch` restores the model exactly. Each block takes and returns the forward's
:class:`~mmtt.modules.state.TokenState`. With a reduction every block's attention runs through
``F.scaled_dot_product_attention`` (LV-ViT's own attention materialises the map), with
``log s`` as the mask after the first reduction.

LV-ViT-S's evaluation output adds ``0.5 * max`` over its patch tokens' auxiliary (token
labeling) logits to the class logits; with a reduction the max runs over the reduced tokens.
Training with ``mix_token`` needs every token back (``recover=True``).
"""
import importlib
import math
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

from ..compat import check_versions

check_versions('tlt', 'timm')

import torch
from torch import Tensor

from ..functional import size_bias
from ..modules import TokenRecovery, TokenTransform
from .adapter import (
    BlockSettings,
    Capture,
    TokenState,
    attend,
    check_host_blocks,
    patch_settings,
    reduce_tokens,
    reduces,
    start_state,
    swap_class,
)
from .adapter import remove_patch as host_remove_patch

with warnings.catch_warnings():
    warnings.simplefilter('ignore', FutureWarning)   # tlt's imports of timm's old paths
    _layers = importlib.import_module('tlt.models.layers')
    # `tlt.models.lvvit` the attribute is the function lvvit (tlt's `from .lvvit import *`).
    _lvvit = importlib.import_module('tlt.models.lvvit')
Attention, Block, LV_ViT = _layers.Attention, _layers.Block, _lvvit.LV_ViT

# 0-based blocks after whose attention tokens are reduced. LV-ViT-S has 16 blocks; the schedule
# (after blocks 5, 8, 11, 1-based) is chosen to meet the paper's 4.6 GFLOPs (Table 2, which does
# not give it): 6.57 -> 4.54 GFLOPs at 224x224, by mmtt's counter.
SCHEDULES: Dict[str, dict] = {
    'lvvit-s/0.7': dict(keep_ratio=0.7, reduce_layers=(4, 7, 10)),
}


class TokenLVAttention(Attention):
    """tlt's ``Attention``; with an ``attn_mask`` (the size bias), a ``capture`` or
    ``_mmtt_fused`` it restates its forward (same projections, ``self.scale``) around
    :func:`mmtt.hosts.adapter.attend`."""
    _mmtt_fused: bool = False

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None, capture: Optional[Capture] = None):
        if attn_mask is None and capture is None and not self._mmtt_fused:
            return super().forward(x, padding_mask)
        if padding_mask is not None:
            raise ValueError('padding_mask is not supported with token reduction')
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out, captured = attend(q, k, v, attn_mask, capture or Capture(),
                               dropout_p=self.attn_drop.p if self.training else 0.0,
                               scale=self.scale)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, self.head_dim * self.num_heads)))
        return out if capture is None else (out, captured)


class TokenLVBlock(Block):
    """tlt's ``Block`` that takes and returns the forward's :class:`TokenState`, with the
    reduction between attention and MLP where it has a transform (Fig. 3)."""
    token_transform: Optional[TokenTransform]
    _mmtt: BlockSettings

    def forward(self, x: Tensor, state: TokenState = TokenState(),
                padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, TokenState]:
        transform, settings = self.token_transform, self._mmtt
        reducing = reduces(transform, x.shape[1] - settings.num_prefix)
        if state.sizes is None and not reducing:
            return super().forward(x, padding_mask), state
        # tlt's Block.forward, with the size bias and the reduction between attention and MLP.
        bias = size_bias(state.sizes, x.dtype)
        if reducing:
            attended, captured = self.attn(self.norm1(x), padding_mask, attn_mask=bias,
                                           capture=Capture.of(transform, keys=settings.keys))
        else:
            attended = self.attn(self.norm1(x), padding_mask, attn_mask=bias)
        x = x + self.drop_path(attended) / self.skip_lam
        if reducing:
            x, state = reduce_tokens(x, state, transform, settings.recovery, settings.num_prefix,
                                     captured)
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam, state


class TokenLV_ViT(LV_ViT):
    """LV-ViT whose ``forward_tokens`` hands the token state from block to block (``forward``
    and ``forward_features`` are tlt's and call it)."""
    token_recovery: Optional[TokenRecovery]
    _mmtt_recover: bool

    def forward_tokens(self, x: Tensor) -> Tensor:
        """x: ``[B, N, C]`` patch tokens; returns ``[B, 1 + M, C]`` (``M = N`` with recovery)."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        # The fixed position embedding holds a square grid of patches.
        side = math.isqrt(x.shape[1] - 1)
        state = start_state(x, 1, (side, side))
        for block in self.blocks:
            x, state = block(x, state)
        x = self.norm(x)
        if self._mmtt_recover:
            x = self.token_recovery.recover(x, state)
        return x


def apply_patch(model: LV_ViT, method: Optional[str] = None, keep_ratio: float = 0.7,
                reduce_layers: Sequence[int] = (4, 7, 10), kappa: Optional[float] = None, tau: Optional[float] = None,
                recover: Union[bool, str] = False, metric: Optional[str] = None,
                preset: Optional[str] = None, schedule: Optional[str] = None,
                layers: Optional[Sequence[int]] = None, **transform_kwargs) -> LV_ViT:
    """Insert token reduction into a tlt LV-ViT (``lvvit_s``, ``lvvit_m``...), in place.

    Arguments as :func:`mmtt.hosts.timm.apply_patch` (``schedule`` from :data:`SCHEDULES`). Blocks
    must be tlt's transformer ``Block`` (LV-ViT's ``order`` of separate ``'mha'``/``'ffn'``
    blocks is refused). Returns the same model object, patched.
    """
    depth = check_host_blocks(model, LV_ViT, TokenLV_ViT, Block, Attention, 'tlt')
    patch = patch_settings(SCHEDULES, depth, f'a model with {depth} blocks', method=method,
                           keep_ratio=keep_ratio, reduce_layers=reduce_layers, kappa=kappa, tau=tau,
                           metric=metric, preset=preset, schedule=schedule, recover=recover,
                           layers=layers, transform_kwargs=transform_kwargs)
    block_settings = BlockSettings(1, patch.recovery, patch.keys)
    transforms = patch.layer_transforms(depth)
    # SDPA in every block of a reducing model (tlt's attention materialises the map).
    fused = any(t is not None for t in transforms)
    for block, transform in zip(model.blocks, transforms):
        swap_class(block, TokenLVBlock, token_transform=transform, _mmtt=block_settings)
        swap_class(block.attn, TokenLVAttention, _mmtt_fused=fused)
    swap_class(model, TokenLV_ViT, _mmtt_recover=bool(recover), token_recovery=patch.recovery)
    return model


def remove_patch(model: LV_ViT) -> LV_ViT:
    """Undo :func:`apply_patch`, in place; the model is then exactly tlt's again
    (:func:`mmtt.remove_patch`, which undoes any host's patch)."""
    return host_remove_patch(model)
