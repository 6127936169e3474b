"""Token Transforming in mmsegmentation's ``VisionTransformer`` (Segmenter, and any mmseg ViT).

:class:`TokenVisionTransformer` is mmseg's backbone with reduction between the attention and
the FFN of chosen layers, and nearest-neighbour recovery before every output, so decode heads
see the full grid. It has exactly mmseg's parameters, so official checkpoints load strictly.
Each layer takes and returns the forward's :class:`~mmtt.modules.state.TokenState`, so nothing
about a forward is stored on the model.
"""
from typing import Optional, Sequence, Tuple

from ..compat import check_versions

check_versions('mmsegmentation', 'mmcv')

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmseg.models.backbones.vit import TransformerEncoderLayer, VisionTransformer
from mmseg.registry import MODELS as SEG_MODELS
from torch import Tensor

from ..functional import size_bias
from ..modules import TokenTransform
from ..modules.state import TokenState
from .adapter import (
    BlockSettings,
    Capture,
    attend,
    check_recovery,
    config_reduction,
    layer_transforms,
    record_parent,
    reduce_tokens,
    reduces,
    swap_class,
)


class TokenMultiheadAttention(MultiheadAttention):
    """mmcv ``MultiheadAttention`` that applies the size bias (eq. 7) and can return scores.

    In a backbone with a reduction configured it computes mmcv's attention from the same
    ``in_proj``/``out_proj`` weights through ``F.scaled_dot_product_attention``, with ``log s``
    as the mask once tokens have been reduced (``nn.MultiheadAttention`` would need that mask
    expanded to ``[B * heads, N, N]``), and in every layer: mmcv's path materialises the
    ``[B * heads, N, N]`` map, which on a CPU made Segmenter-L's unreduced layers 1.7x slower
    than SDPA. With no reduction configured it is mmcv's module unchanged, so outputs equal
    mmseg's exactly.

    ``forward(query, identity, attn_mask=None, capture=None)``: ``attn_mask`` the additive size
    bias of the current tokens; with a :class:`~mmtt.hosts.adapter.Capture` it returns
    ``(out, Captured)``.
    """
    _mmtt_fused: bool = False   # SDPA even before the first reduction

    def forward(self, query: Tensor, identity: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None, capture: Optional[Capture] = None, **kwargs):
        if attn_mask is None and capture is None and not self._mmtt_fused:
            return super().forward(query, identity=identity, **kwargs)
        if kwargs.get('key') is not None or not self.batch_first:
            raise ValueError('TokenMultiheadAttention supports batch-first self-attention only')
        mha = self.attn
        b, n, c = query.shape
        heads = mha.num_heads
        q, k, v = F.linear(query, mha.in_proj_weight, mha.in_proj_bias).reshape(
            b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        out, captured = attend(q, k, v, attn_mask, capture or Capture(),
                               dropout_p=mha.dropout if self.training else 0.0)
        out = mha.out_proj(out.transpose(1, 2).reshape(b, n, c))
        out = (query if identity is None else identity) + self.dropout_layer(self.proj_drop(out))
        return out if capture is None else (out, captured)


class TokenEncoderLayer(TransformerEncoderLayer):
    """mmseg's encoder layer that takes and returns the forward's :class:`TokenState`, with an
    optional reduction between attention and FFN (Fig. 3). Before any reduction and without
    one it runs mmseg's own forward."""
    token_transform: Optional[TokenTransform]
    _mmtt: BlockSettings

    def forward(self, x: Tensor, state: TokenState = TokenState()) -> Tuple[Tensor, TokenState]:
        transform = self.token_transform
        settings = self._mmtt
        reducing = reduces(transform, x.shape[1] - settings.num_prefix)
        if state.sizes is None and not reducing:
            return super().forward(x), state

        def inner_forward(x: Tensor, state: TokenState) -> Tuple[Tensor, TokenState]:
            # mmseg's _inner_forward, with the size bias and the reduction inserted.
            bias = size_bias(state.sizes, x.dtype)
            if reducing:
                x, captured = self.attn(self.norm1(x), identity=x, attn_mask=bias,
                                        capture=Capture.of(transform, keys=settings.keys))
                x, state = reduce_tokens(x, state, transform, settings.recovery,
                                         settings.num_prefix, captured)
            else:
                x = self.attn(self.norm1(x), identity=x, attn_mask=bias)
            return self.ffn(self.norm2(x), identity=x), state

        if self.with_cp and x.requires_grad:
            # Non-reentrant: the state goes in and comes out with the tokens.
            return cp.checkpoint(inner_forward, x, state, use_reentrant=False)
        return inner_forward(x, state)


@SEG_MODELS.register_module()
class TokenVisionTransformer(VisionTransformer):
    """mmseg ``VisionTransformer`` with Token Transforming inserted by config.

    Args:
        token_transform: config of a ``TokenTransform`` (method, keep_ratio, kappa, tau...),
            or None for no reduction.
        reduce_layers: 0-based indices of the layers after whose attention tokens are reduced.
        token_recovery: config of a ``TokenRecovery``; needed when an ``out_indices`` layer
            comes at or after the first reduction.
        metric: features compared for similarity: ``'hidden'`` (the layer's hidden states,
            the paper's) or ``'keys'`` (head-averaged keys, ToMe's); None: the method's entry in
            :data:`mmtt.modules.METHOD_SPECS` (keys for ToMe and PiToMe), as on every host.
        **kwargs: mmseg ``VisionTransformer`` arguments, unchanged.
    """
    _mmtt_has_host = True   # mmtt.remove_patch returns mmseg's VisionTransformer

    def __init__(self, token_transform: Optional[dict] = None, reduce_layers: Sequence[int] = (),
                 token_recovery: Optional[dict] = None, metric: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        depth = len(self.layers)
        reduce_layers, transform, recovery, keys = config_reduction(
            token_transform, reduce_layers, token_recovery, metric, depth, f'num_layers={depth}')
        if not reduce_layers:
            transform = None
        late_outputs = [i for i in self.out_indices if reduce_layers and i >= reduce_layers[0]]
        check_recovery(token_recovery, bool(late_outputs),
                       f'out_indices {late_outputs} come at or after the first of '
                       f'reduce_layers={list(reduce_layers)}, and the decode head needs the full '
                       'token grid')
        self.token_transform = transform
        self.token_recovery = recovery
        self.reduce_layers = reduce_layers
        record_parent(self, ('token_transform', 'token_recovery', 'reduce_layers'),
                      has_host=self._mmtt_has_host)
        settings = BlockSettings(int(self.with_cls_token), recovery, keys)
        # mmseg builds its layers itself; swapping their classes keeps every parameter as is.
        for layer, layer_transform in zip(self.layers, layer_transforms(transform, reduce_layers, depth)):
            swap_class(layer, TokenEncoderLayer, token_transform=layer_transform, _mmtt=settings)
            swap_class(layer.attn, TokenMultiheadAttention, _mmtt_fused=False)
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
        x, hw_shape = self.patch_embed(inputs)
        return self._encode(x, hw_shape)

    def _encode(self, x: Tensor, hw_shape) -> tuple:
        # mmseg's forward after the patch embedding, with the token state handed from layer to
        # layer and recovery before each output.
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)
        outs = [self._grid_output(x, hw_shape)] if self.out_origin else []
        # The patch grid, for clustering methods (ints even under tracing, for FLOP counting).
        state = TokenState(grid=(int(hw_shape[0]), int(hw_shape[1])))
        for i, layer in enumerate(self.layers):
            x, state = layer(x, state)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                full = x if self.token_recovery is None else self.token_recovery.recover(x, state)
                outs.append(self._grid_output(full, hw_shape))
        return tuple(outs)
