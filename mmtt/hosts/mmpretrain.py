"""Token Transforming in mmpretrain's ``VisionTransformer`` and ``DistilledVisionTransformer``.

:class:`TokenVisionTransformer` (DeiT, ViT-AugReg, MAE-fine-tuned ViT) and
:class:`TokenDistilledVisionTransformer` (DeiT distilled) are mmpretrain's backbones with the
reduction between the attention and the FFN of chosen layers, registered in mmpretrain's
``MODELS``. They have exactly mmpretrain's parameters, so official checkpoints load strictly.
Each layer takes and returns the forward's :class:`~mmtt.modules.state.TokenState`, so nothing
about a forward is stored on the model. The class and distillation tokens are never reduced;
``out_type='avg_featmap'`` counts each reduced token ``size`` times; ``'featmap'`` needs a
``token_recovery`` (the full grid); ``'raw'`` returns the reduced tokens, or all of them with a
``token_recovery``. :class:`TokenBackboneMixin` and :class:`TokenEncoderLayerMixin` also serve
``T2T_ViT`` (:mod:`.mmpretrain_t2t`).
"""
from functools import partial
from typing import Optional, Sequence, Tuple

from ..compat import check_versions

check_versions('mmpretrain', 'mmcv')


def _import_mmpretrain_models() -> None:
    """``import mmpretrain.models`` without its multimodal models when transformers >= 5 is
    installed: mmpretrain 1.2.0 imports them whenever transformers >= 4.28 and pycocotools are
    present, and its BLIP code needs ``transformers.modeling_utils.apply_chunking_to_forward``,
    which transformers 5 removed, so the import fails with ``TypeError: NoneType takes no
    arguments``. mmpretrain then registers placeholders for those models, as it does when
    transformers is absent."""
    import sys
    if 'mmpretrain.models' in sys.modules:
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version
    try:
        too_new = Version(version('transformers')).major >= 5
    except PackageNotFoundError:
        too_new = False
    if too_new:
        import mmpretrain.utils.dependency as dependency
        dependency.WITH_MULTIMODAL = False
    import mmpretrain.models  # noqa: F401


_import_mmpretrain_models()

import torch
from mmpretrain.models.backbones.deit import DistilledVisionTransformer
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer, VisionTransformer
from mmpretrain.models.utils import MultiheadAttention, resize_pos_embed
from mmpretrain.models.utils.attention import scaled_dot_product_attention_pyimpl
from mmpretrain.registry import MODELS
from torch import Tensor

from ..functional import size_bias
from ..modules import TokenRecovery, TokenTransform
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
    start_state,
    swap_class,
    weighted_mean,
)


def logit_scale(attn: MultiheadAttention) -> float:
    """The factor by which mmpretrain's ``attn`` multiplies ``q k^T``.

    Without ``qk_scale`` it is SDPA's ``head_dims ** -0.5``. With ``qk_scale`` (T2T-ViT passes
    one) mmpretrain 1.2.0 runs its Python attention with ``scale=head_dims ** -0.5`` and that
    function divides the logits by ``scale``: the factor is then ``head_dims ** 0.5``. The
    reduced layers reproduce the host, whatever it computes.
    """
    fn = attn.scaled_dot_product_attention
    if isinstance(fn, partial) and fn.func is scaled_dot_product_attention_pyimpl:
        return 1.0 / (fn.keywords.get('scale') or attn.head_dims ** 0.5)
    return attn.head_dims ** -0.5


class TokenMultiheadAttention(MultiheadAttention):
    """mmpretrain ``MultiheadAttention`` that applies the size bias (eq. 7) and can return
    scores.

    ``forward(x)`` is mmpretrain's. With ``attn_mask`` (the additive size bias), a
    ``capture`` (a :class:`~mmtt.hosts.adapter.Capture`; it then returns ``(out, Captured)``)
    or in a backbone with a reduction configured (``_mmtt_fused``), it restates mmpretrain's
    forward (same projections, layer scale, drop path, value shortcut) around
    :func:`mmtt.hosts.adapter.attend`, i.e. ``F.scaled_dot_product_attention`` with ``log s`` as
    the mask. mmpretrain's ViT already uses SDPA; T2T-ViT's layers use mmpretrain's Python
    attention, which SDPA replaces in a reduced model.
    """
    _mmtt_fused: bool = False   # SDPA even before the first reduction
    _mmtt_scale: float          # logit_scale(self), fixed when the backbone is built

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                capture: Optional[Capture] = None):
        if attn_mask is None and capture is None and not self._mmtt_fused:
            return super().forward(x)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        out, captured = attend(q, k, v, attn_mask, capture or Capture(),
                               dropout_p=self.attn_drop if self.training else 0.0,
                               scale=self._mmtt_scale)
        out = self.proj(out.transpose(1, 2).reshape(b, n, self.embed_dims))
        out = self.out_drop(self.gamma1(self.proj_drop(out)))
        if self.v_shortcut:
            out = v.squeeze(1) + out
        return out if capture is None else (out, captured)


class TokenEncoderLayerMixin:
    """An mmpretrain encoder layer (``ln1``, ``attn``, ``ln2``, ``ffn``) that takes and returns
    the forward's :class:`TokenState`, with an optional reduction between attention and FFN
    (Fig. 3). Before any reduction and without one it runs the host layer's own forward."""
    token_transform: Optional[TokenTransform]
    _mmtt: BlockSettings

    def forward(self, x: Tensor, state: TokenState = TokenState()) -> Tuple[Tensor, TokenState]:
        transform, settings = self.token_transform, self._mmtt
        reducing = reduces(transform, x.shape[1] - settings.num_prefix)
        if state.sizes is None and not reducing:
            return super().forward(x), state
        # The host layer's forward, with the size bias and the reduction inserted.
        residual = not getattr(self, 'v_shortcut', False)   # T2T's first layers: no residual
        bias = size_bias(state.sizes, x.dtype)
        if reducing:
            attended, captured = self.attn(self.ln1(x), attn_mask=bias,
                                           capture=Capture.of(transform, keys=settings.keys))
            x = x + attended if residual else attended
            x, state = reduce_tokens(x, state, transform, settings.recovery, settings.num_prefix,
                                     captured)
        else:
            attended = self.attn(self.ln1(x), attn_mask=bias)
            x = x + attended if residual else attended
        return self.ffn(self.ln2(x), identity=x), state


class TokenEncoderLayer(TokenEncoderLayerMixin, TransformerEncoderLayer):
    """mmpretrain ViT's ``TransformerEncoderLayer`` with :class:`TokenEncoderLayerMixin`."""


class TokenBackboneMixin:
    """What mmtt adds to an mmpretrain ViT-family backbone: checks, the class swap of its
    layers, and the forward after the embedding with the token state handed from layer to
    layer. A host class supplies ``_embed`` (its forward up to the layers), ``_final_norm``
    and ``_pool`` (what its ``avg_featmap`` applies to the mean), and names its layer list in
    ``_layers_attr``."""
    _layers_attr = 'layers'
    _layer_class: type = TokenEncoderLayer
    token_transform: Optional[TokenTransform]
    token_recovery: Optional[TokenRecovery]
    reduce_layers: Tuple[int, ...]

    def _insert_reduction(self, token_transform: Optional[dict], reduce_layers: Sequence[int],
                          token_recovery: Optional[dict], metric: Optional[str]) -> None:
        layers = getattr(self, self._layers_attr)
        reduce_layers, transform, recovery, keys = config_reduction(
            token_transform, reduce_layers, token_recovery, metric, len(layers), f'num_layers={len(layers)}')
        num_prefix = int(self.num_extra_tokens)
        if transform is not None and transform.score_kind == 'cls' and num_prefix == 0:
            raise ValueError(f"token_transform method={transform.method!r} with selection="
                             f"{transform.selection!r} ranks tokens by class-token attention, but "
                             'with_cls_token=False leaves the model without one')
        if not reduce_layers:
            transform = None
        late = [i for i in self.out_indices if reduce_layers and i >= reduce_layers[0]]
        check_recovery(token_recovery, self.out_type == 'featmap' and bool(late),
                       f"out_type='featmap' outputs {late} come at or after the first of "
                       f'reduce_layers={list(reduce_layers)}, and a feature map needs every token')
        self.token_transform = transform
        self.token_recovery = recovery
        self.reduce_layers = reduce_layers
        record_parent(self, ('token_transform', 'token_recovery', 'reduce_layers'))
        settings = BlockSettings(num_prefix, recovery, keys)
        # mmpretrain builds its layers itself; swapping their classes keeps every parameter.
        for layer, layer_transform in zip(layers, layer_transforms(transform, reduce_layers, len(layers))):
            swap_class(layer, self._layer_class, token_transform=layer_transform, _mmtt=settings)
            swap_class(layer.attn, TokenMultiheadAttention, _mmtt_scale=logit_scale(layer.attn),
                       _mmtt_fused=False)
        self.use_fused_attention(transform is not None and transform.keep_ratio < 1)
        # mmpretrain hands mmcv's DropPath a numpy drop_prob (np.linspace); its `drop_prob == 0.`
        # test then breaks a torch.compile graph in every layer. The same value as a Python float.
        for module in self.modules():
            if type(module).__name__ == 'DropPath' and hasattr(module, 'drop_prob'):
                module.drop_prob = float(module.drop_prob)

    def use_fused_attention(self, enabled: bool = True) -> None:
        """Run every layer's attention through SDPA (``enabled``) or the host's own attention
        until the first reduction (they differ for T2T-ViT only). A reduced model uses SDPA; on
        the unmodified model this gives the kernel-matched baseline."""
        for layer in getattr(self, self._layers_attr):
            layer.attn._mmtt_fused = bool(enabled)

    def forward(self, x: Tensor) -> tuple:
        """x: ``[B, 3, H, W]``; the host's outputs (one per ``out_indices`` entry)."""
        x, patch_resolution = self._embed(x)
        return self._encode(x, patch_resolution)

    def _encode(self, x: Tensor, patch_resolution) -> tuple:
        # The host's forward after the embedding, with the token state handed on.
        layers = getattr(self, self._layers_attr)
        outs = []
        state = start_state(x, int(self.num_extra_tokens), patch_resolution)
        for i, layer in enumerate(layers):
            x, state = layer(x, state)
            if i == len(layers) - 1:
                x = self._final_norm(x)
            if i in self.out_indices:
                outs.append(self._format_tokens(x, state, patch_resolution))
        return tuple(outs)

    def _format_tokens(self, x: Tensor, state: TokenState, hw):
        """The host's ``_format_output`` of the current tokens ``x`` (``[B, P + M, C]``)."""
        if state.sizes is None:
            return self._format_output(x, hw)
        if self.out_type == 'avg_featmap':   # each token counted `size` times
            return self._pool(weighted_mean(x, state.sizes, self.num_extra_tokens))
        if self.out_type in ('featmap', 'raw') and self.token_recovery is not None:
            x = self.token_recovery.recover(x, state)
        return self._format_output(x, hw)


def _vit_embed(model: VisionTransformer, x: Tensor, prefix: Sequence[Tensor],
               pre_norm: bool) -> Tuple[Tensor, tuple]:
    # mmpretrain's ViT / DeiT forward up to the layers.
    x, patch_resolution = model.patch_embed(x)
    if prefix:
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)
    x = x + resize_pos_embed(model.pos_embed, model.patch_resolution, patch_resolution,
                             mode=model.interpolate_mode, num_extra_tokens=model.num_extra_tokens)
    x = model.drop_after_pos(x)
    return (model.pre_norm(x) if pre_norm else x), patch_resolution


@MODELS.register_module()
class TokenVisionTransformer(TokenBackboneMixin, VisionTransformer):
    """mmpretrain ``VisionTransformer`` with Token Transforming inserted by config.

    Args:
        token_transform: config of a ``TokenTransform`` (method, keep_ratio, kappa, tau...), or
            None for no reduction.
        reduce_layers: 0-based indices of the layers after whose attention tokens are reduced.
        token_recovery: config of a ``TokenRecovery``; needed for ``out_type='featmap'`` when
            an ``out_indices`` layer comes at or after the first reduction.
        metric: features compared for similarity: ``'hidden'`` (the layer's hidden states,
            the paper's) or ``'keys'`` (head-averaged keys, ToMe's); None: keys for ToMe,
            hidden states otherwise (as ``mmtt.hosts.timm.apply_patch``).
        **kwargs: mmpretrain ``VisionTransformer`` arguments, unchanged.
    """

    def __init__(self, token_transform: Optional[dict] = None, reduce_layers: Sequence[int] = (),
                 token_recovery: Optional[dict] = None, metric: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._insert_reduction(token_transform, reduce_layers, token_recovery, metric)

    def _embed(self, x: Tensor) -> Tuple[Tensor, tuple]:
        prefix = [] if self.cls_token is None else [self.cls_token]
        return _vit_embed(self, x, prefix, pre_norm=True)

    def _final_norm(self, x: Tensor) -> Tensor:
        return self.ln1(x) if self.final_norm else x

    def _pool(self, pooled: Tensor) -> Tensor:
        return self.ln2(pooled)


@MODELS.register_module()
class TokenDistilledVisionTransformer(TokenVisionTransformer, DistilledVisionTransformer):
    """mmpretrain ``DistilledVisionTransformer`` (DeiT distilled) with Token Transforming; the
    class and distillation tokens are never reduced. Arguments as
    :class:`TokenVisionTransformer` (``arch`` defaults to ``'deit-base'``, as mmpretrain's)."""

    def _embed(self, x: Tensor) -> Tuple[Tensor, tuple]:
        # mmpretrain's DistilledVisionTransformer.forward has no pre_norm.
        return _vit_embed(self, x, [self.cls_token, self.dist_token], pre_norm=False)
