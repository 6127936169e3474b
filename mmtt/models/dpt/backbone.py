"""DPT-Hybrid's backbone: a ResNet (stem and stages) whose 1/16 feature map feeds a ViT.

:class:`TokenHybridVisionTransformer` is mmtt's
:class:`~mmtt.hosts.mmseg.TokenVisionTransformer` (mmseg's ``VisionTransformer`` with Token
Transforming inserted by config) with mmseg's patch embedding swapped for the hybrid one of
DPT-Hybrid / timm's ``vit_base_r50_s16_384``: ResNet-50 stem and first three stages (BiT
flavour: weight-standardised convs, GroupNorm), then a 1x1 convolution to the embedding width.
It returns the ResNet stage outputs DPT's first two reassemble taps use, then the ViT layer
outputs of ``out_indices`` (full token grid: tokens are recovered before each of them when a
reduction happened earlier).
"""
from functools import partial
from typing import List, Optional, Sequence, Tuple

from mmseg.registry import MODELS as SEG_MODELS
from timm.layers import GroupNormAct, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from torch import Tensor, nn

from ...hosts.mmseg import TokenVisionTransformer


class HybridPatchEmbed(nn.Module):
    """ResNet stem + stages, then a 1x1 projection: image -> ViT tokens.

    Called like mmseg's ``PatchEmbed`` (returns the tokens and the grid size); the backbone,
    which also hands stage outputs to the head, calls :meth:`stages` and :meth:`project`.

    Args:
        in_channels: image channels.
        embed_dims: token width C.
        layers: Bottleneck blocks per stage; ResNet-50's first three stages are ``(3, 4, 9)``.
        channels: output channels per stage (bottleneck width is a quarter of them).
        stem_channels: channels of the 7x7 stem convolution.
        norm_groups: GroupNorm groups in every norm layer (BiT: 32).
    """

    def __init__(self, in_channels: int, embed_dims: int, layers: Sequence[int],
                 channels: Sequence[int], stem_channels: int, norm_groups: int) -> None:
        super().__init__()
        # timm's own hybrid ViT builds this ResNet the same way (vision_transformer_hybrid.py):
        # 'same' padding as TensorFlow, eps 1e-8 in the weight standardisation.
        self.resnet = ResNetV2(
            layers=list(layers), channels=tuple(channels), num_classes=0, global_pool='',
            in_chans=in_channels, stem_chs=stem_channels, stem_type='same', preact=False,
            conv_layer=partial(StdConv2dSame, eps=1e-8),
            norm_layer=partial(GroupNormAct, num_groups=norm_groups))
        self.proj = nn.Conv2d(channels[-1], embed_dims, kernel_size=1)

    def stages(self, x: Tensor) -> List[Tensor]:
        """``x``: ``[B, 3, H, W]`` -> the output of every ResNet stage."""
        x = self.resnet.stem(x)
        outputs: List[Tensor] = []
        for stage in self.resnet.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def project(self, feature: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """The last stage's map -> tokens ``[B, h * w, C]`` and ``(h, w)``."""
        x = self.proj(feature)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """``x``: ``[B, 3, H, W]`` -> tokens ``[B, h * w, C]`` and ``(h, w)``, h = ceil(H / 16)."""
        return self.project(self.stages(x)[-1])


@SEG_MODELS.register_module()
class TokenHybridVisionTransformer(TokenVisionTransformer):
    """ResNet + ViT hybrid (DPT-Hybrid) with Token Transforming inserted by config.

    Defaults are DPT-Hybrid's: ResNet-50 stages ``(3, 4, 9)``, ViT-B/16 (768 wide, 12 layers,
    12 heads, LayerNorm eps 1e-6, 24x24 position grid resized bilinearly), taps at ResNet stages
    0 and 1 and ViT layers 8 and 11 (0-based), class token returned with each ViT output for
    DPT's readout, no final norm (DPT reads the block outputs).

    Args:
        resnet_layers: Bottleneck blocks per ResNet stage; the number of stages sets the
            token stride, ``4 * 2 ** (len(resnet_layers) - 1)``, which must equal ``patch_size``.
        resnet_channels: output channels of each stage.
        resnet_stem_channels: channels of the stem convolution.
        resnet_norm_groups: GroupNorm groups; must divide every ResNet width.
        resnet_out_indices: stages whose outputs come first in the returned tuple.
        img_size: size the position embedding was trained at (its grid is ``img_size / 16``).
        patch_size: token stride in pixels (here only used for the position grid).
        in_channels: image channels.
        embed_dims: ViT width.
        out_indices: 0-based ViT layers whose outputs are returned.
        output_cls_token: return ``[grid, cls]`` pairs, as DPT's 'project'/'add' readouts need.
        interpolate_mode: how the position embedding is resized to the token grid.
        norm_cfg: ViT norm layers; None gives DPT's ``LN`` with eps 1e-6.
        final_norm: normalise the last layer's output; DPT does not.
        **kwargs: :class:`TokenVisionTransformer` / mmseg ``VisionTransformer`` arguments
            (``num_layers``, ``num_heads``, ``token_transform``, ``reduce_layers``,
            ``token_recovery``...).

    Returns (forward): a tuple of the ``resnet_out_indices`` stage maps ``[B, C_s, H / 2^(s+2),
    W / 2^(s+2)]``, then per ViT output ``[grid [B, C, H / 16, W / 16], cls [B, C]]``.
    """

    _mmtt_has_host = False   # the hybrid is mmtt's own: no mmseg class to return to

    def __init__(self, resnet_layers: Sequence[int] = (3, 4, 9),
                 resnet_channels: Sequence[int] = (256, 512, 1024),
                 resnet_stem_channels: int = 64, resnet_norm_groups: int = 32,
                 resnet_out_indices: Sequence[int] = (0, 1), img_size: int = 384,
                 patch_size: int = 16, in_channels: int = 3, embed_dims: int = 768,
                 out_indices: Sequence[int] = (8, 11), output_cls_token: bool = True,
                 interpolate_mode: str = 'bilinear', norm_cfg: Optional[dict] = None,
                 final_norm: bool = False, **kwargs) -> None:
        _check_resnet(resnet_layers, resnet_channels, resnet_stem_channels, resnet_norm_groups,
                      resnet_out_indices, patch_size)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            embed_dims=embed_dims, out_indices=list(out_indices),
            output_cls_token=output_cls_token, interpolate_mode=interpolate_mode,
            norm_cfg=norm_cfg if norm_cfg is not None else dict(type='LN', eps=1e-6),
            final_norm=final_norm, **kwargs)
        # mmseg's VisionTransformer always builds its convolutional PatchEmbed; replace it (the
        # mmtt layers built by the parent are untouched) and re-apply its freezing rule.
        self.patch_embed = HybridPatchEmbed(in_channels, embed_dims, resnet_layers,
                                            resnet_channels, resnet_stem_channels,
                                            resnet_norm_groups)
        self.resnet_out_indices = tuple(int(i) for i in resnet_out_indices)
        self._freeze()

    def forward(self, inputs: Tensor) -> tuple:
        """``inputs``: ``[B, 3, H, W]``; see the class docstring for the outputs."""
        stage_outputs = self.patch_embed.stages(inputs)
        x, hw_shape = self.patch_embed.project(stage_outputs[-1])
        return tuple(stage_outputs[i] for i in self.resnet_out_indices) + self._encode(x, hw_shape)


def _check_resnet(layers: Sequence[int], channels: Sequence[int], stem_channels: int,
                  norm_groups: int, out_indices: Sequence[int], patch_size: int) -> None:
    """Config errors as ``ValueError`` naming the key, before anything is built."""
    if not layers or len(channels) != len(layers):
        raise ValueError(f'resnet_channels={tuple(channels)} must give one width per stage of '
                         f'resnet_layers={tuple(layers)}')
    stride = 4 * 2 ** (len(layers) - 1)
    if stride != patch_size:
        raise ValueError(f'resnet_layers={tuple(layers)} gives {len(layers)} stages, a token '
                         f'stride of {stride}, but patch_size={patch_size}')
    bad = [i for i in out_indices if not 0 <= int(i) < len(layers)]
    if bad:
        raise ValueError(f'resnet_out_indices={bad} out of range for {len(layers)} stages')
    # BiT blocks normalise the stem, each stage's output and its bottleneck (a quarter of it).
    widths = [stem_channels] + [c for ch in channels for c in (ch, ch // 4)]
    if norm_groups < 1 or any(w % norm_groups for w in widths):
        raise ValueError(f'resnet_norm_groups={norm_groups} must divide every ResNet width: '
                         f'stem {stem_channels}, stages {tuple(channels)} and their bottlenecks '
                         f'{tuple(c // 4 for c in channels)}')
