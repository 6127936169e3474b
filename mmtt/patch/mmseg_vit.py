"""Token Transforming in mmsegmentation's ``VisionTransformer`` (Segmenter, and any mmseg ViT).

:class:`TokenVisionTransformer` is mmseg's backbone with reduction between the attention and
the FFN of chosen layers, and nearest-neighbour recovery before every output, so decode heads
see the full grid. It has exactly mmseg's parameters, so official checkpoints load strictly.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmseg.models.backbones.vit import TransformerEncoderLayer, VisionTransformer
from mmseg.registry import MODELS as SEG_MODELS
from torch import Tensor

from ..functional import attention_with_scores, size_bias
from ..functional._checks import check_layers
from ._build import build_module
from ._state import TokenState


class TokenMultiheadAttention(MultiheadAttention):
    """mmcv ``MultiheadAttention`` that applies the size bias (eq. 7) and can return scores.

    In a backbone with a reduction configured it computes mmcv's attention from the same
    ``in_proj``/``out_proj`` weights through ``F.scaled_dot_product_attention``, with ``log s``
    as the mask once tokens have been reduced (``nn.MultiheadAttention`` would need that mask
    expanded to ``[B * heads, N, N]``), and in every layer: mmcv's path materialises the
    ``[B * heads, N, N]`` map, which on a CPU made Segmenter-L's unreduced layers 1.7x slower
    than SDPA. With no reduction configured it is mmcv's module unchanged, so outputs equal
    mmseg's exactly.
    """
    _mmtt_state: TokenState
    _mmtt_capture: Optional[str] = None   # 'informative' or 'cls' in a reducing layer
    _mmtt_fused: bool = False             # SDPA even before the first reduction
    _mmtt_score_stride: int = 1           # TokenTransform.score_stride of a reducing layer

    def forward(self, query: Tensor, identity: Optional[Tensor] = None, **kwargs) -> Tensor:
        state = self._mmtt_state
        if state.sizes is None and self._mmtt_capture is None and not self._mmtt_fused:
            return super().forward(query, identity=identity, **kwargs)
        if kwargs.get('key') is not None or not self.batch_first:
            raise ValueError('TokenMultiheadAttention supports batch-first self-attention only')
        mha = self.attn
        b, n, c = query.shape
        heads = mha.num_heads
        q, k, v = F.linear(query, mha.in_proj_weight, mha.in_proj_bias).reshape(
            b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = size_bias(state.sizes, q.dtype)
        if self._mmtt_capture is None:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=mha.dropout if self.training else 0.0)
        else:
            out, informative, cls = attention_with_scores(q, k, v, bias,
                                                          score_stride=self._mmtt_score_stride)
            self.captured = informative if self._mmtt_capture == 'informative' else cls
        out = mha.out_proj(out.transpose(1, 2).reshape(b, n, c))
        return (query if identity is None else identity) + self.dropout_layer(self.proj_drop(out))


class TokenEncoderLayer(TransformerEncoderLayer):
    """mmseg's encoder layer with an optional reduction between attention and FFN (Fig. 3)."""
    _mmtt_state: TokenState
    mmtt_transform: Optional[torch.nn.Module]

    def forward(self, x: Tensor) -> Tensor:
        transform = self.mmtt_transform
        n = x.shape[1] - self._mmtt_state.num_prefix
        if transform is None or transform.num_keep(n) == n:
            return super().forward(x)

        def inner_forward(x):
            self.attn._mmtt_capture = transform.score_kind
            try:
                x = self.attn(self.norm1(x), identity=x)
            finally:
                self.attn._mmtt_capture = None
            scores = self.attn.__dict__.pop('captured', None)
            x = self._mmtt_state.reduce(x, transform, scores=scores)
            return self.ffn(self.norm2(x), identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner_forward, x, use_reentrant=False)
        return inner_forward(x)


@SEG_MODELS.register_module()
class TokenVisionTransformer(VisionTransformer):
    """mmseg ``VisionTransformer`` with Token Transforming inserted by config.

    Args:
        token_transform: config of a ``TokenTransform`` (method, keep_ratio, kappa, tau...),
            or None for no reduction.
        reduce_layers: 0-based indices of the layers after whose attention tokens are reduced.
        token_recovery: config of a ``TokenRecovery``; needed when an ``out_indices`` layer
            comes at or after the first reduction.
        **kwargs: mmseg ``VisionTransformer`` arguments, unchanged.
    """

    def __init__(self, token_transform: Optional[dict] = None, reduce_layers: Sequence[int] = (),
                 token_recovery: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        depth = len(self.layers)
        reduce_layers = check_layers('reduce_layers', reduce_layers)
        bad = [i for i in reduce_layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f'reduce_layers={bad} out of range for num_layers={depth}')
        if reduce_layers and token_transform is None:
            raise ValueError('reduce_layers is set but token_transform is None')
        # Built even when no layer reduces, so a bad setting fails here and not in a later run.
        transform = build_module('token_transform', token_transform)
        if not reduce_layers:
            transform = None
        late_outputs = [i for i in self.out_indices if reduce_layers and i >= reduce_layers[0]]
        if late_outputs and token_recovery is None:
            raise ValueError(f'token_recovery is required: out_indices {late_outputs} come at or '
                             f'after the first of reduce_layers={reduce_layers}, and the decode '
                             'head needs the full token grid')
        self.token_transform = transform
        self.token_recovery = build_module('token_recovery', token_recovery)
        self.reduce_layers = tuple(reduce_layers)
        state = TokenState(int(self.with_cls_token), self.token_recovery)
        self._mmtt_state = state
        # mmseg builds its layers itself; swapping their classes keeps every parameter as is.
        for i, layer in enumerate(self.layers):
            layer.__class__ = TokenEncoderLayer
            layer.attn.__class__ = TokenMultiheadAttention
            layer._mmtt_state = layer.attn._mmtt_state = state
            layer.mmtt_transform = transform if i in reduce_layers else None
            if transform is not None:
                layer.attn._mmtt_score_stride = transform.score_stride

        self.use_fused_attention(transform is not None and transform.keep_ratio < 1)

    def use_fused_attention(self, enabled: bool = True) -> None:
        """Run every layer's attention through SDPA (``enabled``) or mmcv's own module until
        the first reduction. A reduced model uses SDPA; on the unmodified model this gives
        the kernel-matched baseline of ``tools/benchmark.py --sdpa-baseline``."""
        for layer in self.layers:
            layer.attn._mmtt_fused = bool(enabled)

    def _grid_output(self, x: Tensor, hw_shape) -> object:
        # As mmseg's forward: drop the class token, tokens -> [B, C, H, W].
        out = x[:, 1:] if self.with_cls_token else x
        # The channel count is explicit, as in mmseg: -1 cannot be inferred for a batch of 0.
        out = out.reshape(out.shape[0], hw_shape[0], hw_shape[1], out.shape[-1]).permute(0, 3, 1, 2).contiguous()
        return [out, x[:, 0]] if self.output_cls_token else out

    def forward(self, inputs: Tensor) -> tuple:
        # mmseg's forward, with token state reset per call and recovery before each output.
        state = self._mmtt_state
        state.reset()
        x, hw_shape = self.patch_embed(inputs)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)
        outs = [self._grid_output(x, hw_shape)] if self.out_origin else []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                full = x if state.index is None else state.recover(x)
                outs.append(self._grid_output(full, hw_shape))
        return tuple(outs)
