"""PS-ViT (Yue et al., "Vision Transformer with Progressive Sampling", ICCV 2021) in plain PyTorch,
with Token Transforming in its transformer layers (the paper's Table 2).

The model: a convolutional stem (7x7 conv, max pool, two bottleneck layers) gives a feature map
at 1/4 of the input; ``num_iters`` progressive sampling iterations each sample it bilinearly at
one point per token, add a position embedding of the point and the previous iteration's tokens,
run a transformer layer and predict the offsets of the next points; a class token joins the
sampled tokens for the remaining plain transformer layers, a norm and a linear head.

The authors sample with a CUDA kernel; :func:`progressive_sample` is ``F.grid_sample`` set up to
give the same values (points ``(y, x)`` in feature-map pixels, pixel centres at integers,
corners outside the map read as zero, nothing read at or beyond one pixel outside). Parameter
and buffer names and shapes are the authors', so their released checkpoints load with
``strict=True``.

Token Transforming reduces tokens between the attention and the FFN of chosen plain layers
(``reduce_layers``, 0-based, counting ``trans_layers``), never the class token and never in the
sampling iterations (each resamples the full grid). Every attention runs through
``F.scaled_dot_product_attention``, with ``log s`` as the mask after the first reduction; with
no reduction configured, or ``keep_ratio=1``, the forward is the same code path as the
unmodified model's.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import size_bias
from ..functional._checks import check_choice
from ..hosts.adapter import (
    BlockSettings,
    Capture,
    attend,
    config_reduction,
    layer_transforms,
    reduce_tokens,
    reduces,
    start_state,
)
from ..modules import TokenRecovery, TokenTransform
from ..modules.state import TokenState

__all__ = ['PSViT', 'progressive_sample', 'ps_vit_b_14', 'ps_vit_ti_14', 'convert_to_mmpretrain']

OUT_TYPES = ('cls_token', 'raw')


def progressive_sample(feature: Tensor, point: Tensor, offset: Tensor, gamma: float = 1.0) -> Tensor:
    """Bilinear samples of ``feature`` at ``point + gamma * offset``: ``[B, P, C]``.

    Args:
        feature: ``[B, C, H, W]`` (H, W >= 2).
        point, offset: ``[B, P, 2]``, ``(y, x)`` in pixels of ``feature`` (pixel ``i`` at ``i``).
    """
    height, width = feature.shape[-2:]
    where = point + offset * gamma
    # align_corners=True maps -1 and 1 to the centres of the first and last pixels, so the
    # pixel coordinates scale linearly; zero padding gives the kernel's out-of-map handling.
    scale = where.new_tensor([2.0 / (width - 1), 2.0 / (height - 1)])
    grid = where.flip(-1) * scale - 1.0
    out = F.grid_sample(feature, grid.unsqueeze(1), mode='bilinear', padding_mode='zeros',
                        align_corners=True)
    return out.squeeze(2).transpose(1, 2)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 convolutions with batch norm), projected shortcut when
    the channels change."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def build_stem(in_chans: int, channels: Sequence[int]) -> nn.Sequential:
    """7x7 stride-2 conv, batch norm, ReLU, 3x3 stride-2 max pool, then one bottleneck (64 middle
    channels) per entry of ``channels``: a feature map at 1/4 of the input."""
    layers = [nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
    previous = 64
    for c in channels:
        layers.append(Bottleneck(previous, 64, c))
        previous = c
    return nn.Sequential(*layers)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention through SDPA (:func:`mmtt.hosts.adapter.attend`), the logits
    scaled by ``qk_scale`` (default ``head_dim ** -0.5``) and biased by ``log s`` once tokens
    have sizes."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                capture: Optional[Capture] = None):
        """x: ``[B, N, C]``; attn_mask: the additive size bias or None. Returns ``[B, N, C]``,
        or with a ``capture`` ``([B, N, C], Captured)``."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out, captured = attend(q, k, v, attn_mask, capture or Capture(),
                               dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
        return out if capture is None else (out, captured)


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer; with a ``token_transform`` it reduces tokens between the
    attention and the FFN (the paper's Fig. 3). Takes and returns the forward's
    :class:`~mmtt.modules.state.TokenState`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.token_transform: Optional[TokenTransform] = None
        self._mmtt = BlockSettings(num_prefix=1)

    def forward(self, x: Tensor, state: TokenState = TokenState()) -> Tuple[Tensor, TokenState]:
        transform, settings = self.token_transform, self._mmtt
        bias = size_bias(state.sizes, x.dtype)
        if reduces(transform, x.shape[1] - settings.num_prefix):
            attended, captured = self.attn(self.norm1(x), bias,
                                           Capture.of(transform, keys=settings.keys))
            x = x + self.drop_path(attended)
            x, state = reduce_tokens(x, state, transform, settings.recovery, settings.num_prefix,
                                     captured)
        else:
            x = x + self.drop_path(self.attn(self.norm1(x), bias))
        return x + self.drop_path(self.mlp(self.norm2(x))), state


class SamplingLayer(nn.Module):
    """One progressive sampling iteration: sample at the current points, add their position
    embedding (``position_layer`` is shared by all iterations) and the previous tokens, run a
    transformer layer, predict the next offsets (the last iteration predicts none)."""

    def __init__(self, feat_size: int, dim: int, position_layer: nn.Linear, pred_offset: bool,
                 gamma: float, offset_bias: bool, **layer) -> None:
        super().__init__()
        self.feat_size = float(feat_size)
        self.gamma = gamma
        self.transformer_layer = EncoderLayer(dim, **layer)
        self.position_layer = position_layer
        self.offset_layer = nn.Linear(dim, 2, bias=offset_bias) if pred_offset else None

    def forward(self, feature: Tensor, point: Tensor, offset: Optional[Tensor],
                previous: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """feature: ``[B, C, H, W]``; point, offset: ``[B, P, 2]`` (y, x); previous: ``[B, P, C]``.
        Returns the tokens, the next offsets and the points sampled."""
        if offset is None:
            offset = torch.zeros_like(point)
        tokens = progressive_sample(feature, point, offset, self.gamma)
        # The authors move the points by the offset without gamma, and stop its gradient here.
        point = point + offset.detach()
        tokens = tokens + self.position_layer(point / self.feat_size)
        if previous is not None:
            tokens = tokens + previous
        tokens, _ = self.transformer_layer(tokens)
        offset = self.offset_layer(tokens) if self.offset_layer is not None else None
        return tokens, offset, point


def initial_points(feat_size: int, num_h: int, num_w: int) -> Tensor:
    """``[1, num_w * num_h, 2]`` points ``(y, x)`` at the centres of a ``num_h x num_w`` grid of
    cells over the feature map, in the authors' order (x outer, y inner)."""
    step_w, step_h = feat_size / num_w, feat_size / num_h
    xs = torch.tensor([i * step_w for i in range(num_w)]) + step_w / 2
    ys = torch.tensor([i * step_h for i in range(num_h)]) + step_h / 2
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing='ij')
    return torch.stack([grid_y, grid_x]).reshape(2, -1).t().contiguous().unsqueeze(0)


class PSViT(nn.Module):
    """PS-ViT with optional Token Transforming.

    Args:
        img_size: input size (square); the sampling points are fixed for it.
        num_point_h, num_point_w: grid of sampled tokens.
        num_iters: progressive sampling iterations (the first ``num_iters`` of ``depth`` layers).
        stem_channels: output channels of the stem's bottleneck layers (the last is embed_dim).
        num_classes: head outputs; 0: no head (``forward`` returns the features).
        qk_scale: attention logits scale; None: ``head_dim ** -0.5``.
        offset_gamma: factor on the predicted offsets where the map is sampled.
        token_transform: config of a ``TokenTransform`` (method, keep_ratio, kappa, tau...) or None.
        reduce_layers: 0-based indices of the plain layers (``trans_layers``) after whose
            attention tokens are reduced.
        token_recovery: config of a ``TokenRecovery`` (every token back in ``out_type='raw'``).
        metric: ``'hidden'`` or ``'keys'``; None: the method's default.
        out_type: features: ``'cls_token'`` (``[B, C]``, normalised) or ``'raw'`` (``[B, 1 + M, C]``).
    """

    def __init__(self, img_size: int = 224, num_point_h: int = 14, num_point_w: int = 14,
                 in_chans: int = 3, downsample_ratio: int = 4, num_classes: int = 1000,
                 num_iters: int = 4, depth: int = 14, embed_dim: int = 384, num_heads: int = 6,
                 mlp_ratio: float = 3.0, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 stem_channels: Sequence[int] = (256, 384), offset_gamma: float = 1.0,
                 offset_bias: bool = True, token_transform: Optional[dict] = None,
                 reduce_layers: Sequence[int] = (), token_recovery: Optional[dict] = None,
                 metric: Optional[str] = None, out_type: str = 'cls_token') -> None:
        super().__init__()
        if not 1 <= num_iters <= depth:
            raise ValueError(f'num_iters={num_iters} must be in [1, depth={depth}]')
        if stem_channels[-1] != embed_dim:
            raise ValueError(f'stem_channels={list(stem_channels)} must end with embed_dim={embed_dim}')
        check_choice('out_type', out_type, OUT_TYPES)
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.feat_size = img_size // downsample_ratio
        self.out_type = out_type
        self.point_grid = (num_point_h, num_point_w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer('point_coord', initial_points(self.feat_size, num_point_h, num_point_w))
        self.pos_layer = nn.Linear(2, embed_dim)
        self.stem = build_stem(in_chans, stem_channels)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        layer = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                     drop=drop_rate, attn_drop=attn_drop_rate)
        self.ps_layers = nn.ModuleList(
            SamplingLayer(self.feat_size, embed_dim, self.pos_layer, i < num_iters - 1, offset_gamma,
                          offset_bias, drop_path=rates[i], **layer) for i in range(num_iters))
        self.trans_layers = nn.ModuleList(
            EncoderLayer(embed_dim, drop_path=rates[i], **layer) for i in range(num_iters, depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        self._insert_reduction(token_transform, reduce_layers, token_recovery, metric)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for layer in self.ps_layers:   # the sampling starts at the grid
            if layer.offset_layer is not None:
                nn.init.zeros_(layer.offset_layer.weight)
                if layer.offset_layer.bias is not None:
                    nn.init.zeros_(layer.offset_layer.bias)

    def _insert_reduction(self, token_transform: Optional[dict], reduce_layers: Sequence[int],
                          token_recovery: Optional[dict], metric: Optional[str]) -> None:
        depth = len(self.trans_layers)
        reduce_layers, transform, recovery, keys = config_reduction(
            token_transform, reduce_layers, token_recovery, metric, depth, f'{depth} trans_layers')
        self.token_transform: Optional[TokenTransform] = transform if reduce_layers else None
        self.token_recovery: Optional[TokenRecovery] = recovery
        self.reduce_layers = reduce_layers
        settings = BlockSettings(1, recovery, keys)
        for layer, layer_transform in zip(self.trans_layers,
                                          layer_transforms(self.token_transform, reduce_layers, depth)):
            layer.token_transform = layer_transform
            layer._mmtt = settings

    def forward_features(self, x: Tensor) -> Tensor:
        """x: ``[B, 3, img_size, img_size]``; the ``out_type`` features."""
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f'input {tuple(x.shape[-2:])} differs from img_size={self.img_size}')
        feature = self.stem(x)
        point = self.point_coord.expand(x.shape[0], -1, -1)
        tokens = offset = None
        for layer in self.ps_layers:
            tokens, offset, point = layer(feature, point, offset, tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        # Token i stays the i-th point of the row-major lattice the sampling starts from (the
        # points move, the lattice's order stays), so the clustering methods take that grid.
        state = start_state(x, 1, self.point_grid)
        for layer in self.trans_layers:
            x, state = layer(x, state)
        x = self.norm(x)
        if self.out_type == 'cls_token':
            return x[:, 0]
        if state.sizes is not None and self.token_recovery is not None:
            x = self.token_recovery.recover(x, state)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def ps_vit_b_14(**kwargs) -> PSViT:
    """PS-ViT-B/14: 14x14 tokens of 384 channels, 4 sampling iterations of 14 layers (21.3 M
    parameters). The authors build their released weights with ``qk_scale=384 ** -0.5``."""
    return PSViT(**{**dict(embed_dim=384, num_heads=6, depth=14, num_iters=4, mlp_ratio=3.0,
                           stem_channels=(256, 384)), **kwargs})


def ps_vit_ti_14(**kwargs) -> PSViT:
    """PS-ViT-Ti/14: 192 channels, 3 heads, 12 layers (the authors give ``qk_scale=192 ** -0.5``
    for released weights)."""
    return PSViT(**{**dict(embed_dim=192, num_heads=3, depth=12, num_iters=4, mlp_ratio=3.0,
                           stem_channels=(192, 192)), **kwargs})


def convert_to_mmpretrain(checkpoint: Mapping) -> Dict[str, Tensor]:
    """The authors' checkpoint (a state dict, or a dict holding one under ``'state_dict'`` or
    ``'model'``) in the keys of an mmpretrain ``ImageClassifier`` with the ``TokenPSViT``
    backbone and a ``LinearClsHead``: ``backbone.*``, ``head.fc.*``."""
    state = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    return {(f'head.fc.{k[5:]}' if k.startswith('head.') else f'backbone.{k}'): v
            for k, v in state.items()}
