"""Token Transforming for timm ``VisionTransformer`` models (DeiT, ViT-AugReg, MAE, DINOv2...).

The patch swaps classes in place (``module.__class__``) and adds parameter-free submodules,
so the state dict keeps its keys and :func:`remove_patch` restores the model exactly.
Blocks without a reduction run timm's own code with ``log s`` as SDPA's ``attn_mask``, so
the fused attention kernel stays in use.
"""
from typing import Dict, Optional, Sequence, Union

import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor

from ..functional import attention_with_scores, size_bias
from ..functional._checks import check_kwargs, check_layers
from ..modules import TokenRecovery, TokenTransform
from ._state import TokenState

# The paper's schedules (Table 1), as 0-based block indices after whose attention tokens are
# reduced. "/0.7" keeps 70% of the tokens at each reduction.
PRESETS: Dict[str, dict] = {
    'deit-s/0.7': dict(keep_ratio=0.7, layers=(3, 6, 9)),
    'deit-s/0.6': dict(keep_ratio=0.6, layers=(3, 6, 9)),
    'vit-s/0.7': dict(keep_ratio=0.7, layers=(3, 6, 9)),
    'vit-s/0.5': dict(keep_ratio=0.5, layers=(3, 6, 9)),
}


class TokenAttention(Attention):
    """timm ``Attention`` that can also return the scores a reduction needs.

    Only a block that reduces tokens uses the capture path. It restates timm's forward
    (projections, norms and gate in the same order) around
    :func:`mmtt.functional.attention_with_scores`, which computes the attention in row blocks
    and keeps the column sums instead of the ``[B, heads, N, N]`` map.
    """
    _mmtt_capture: Optional[str] = None   # None, 'informative' or 'cls'
    _mmtt_keys: bool = False
    _mmtt_score_stride: int = 1           # TokenTransform.score_stride of its block

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False):
        if self._mmtt_capture is None and not self._mmtt_keys:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self._mmtt_capture is None:   # keys only (ToMe): the fused kernel still applies
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            self.captured = {'keys': k.mean(dim=1)}
        else:
            out, informative, cls = attention_with_scores(q, k, v, attn_mask,
                                                          score_stride=self._mmtt_score_stride)
            self.captured = {'informative': informative, 'cls': cls, 'keys': k.mean(dim=1)}
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


class TokenBlock(Block):
    """timm ``Block`` that applies the size bias, and reduces tokens where it has a transform."""
    mmtt_transform: Optional[TokenTransform]
    _mmtt_state: TokenState
    _mmtt_metric: str

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False):
        state = self._mmtt_state
        bias = size_bias(state.sizes, x.dtype)
        if bias is not None:
            attn_mask = bias if attn_mask is None else attn_mask + bias
        transform = self.mmtt_transform
        n = x.shape[1] - state.num_prefix
        if transform is None or transform.num_keep(n) == n:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        # timm's Block.forward, with the reduction between attention and MLP (Fig. 3).
        self.attn._mmtt_capture = transform.score_kind
        self.attn._mmtt_keys = self._mmtt_metric == 'keys'
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        captured = self.attn.__dict__.pop('captured', {})
        scores = captured[transform.score_kind] if transform.score_kind else None
        metric = captured['keys'] if self._mmtt_metric == 'keys' else None
        x = state.reduce(x, transform, scores=scores, metric=metric)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TokenModelMixin:
    """Mixed into the model's own class (``VisionTransformer`` or a subclass such as DeiT's
    distilled model): resets token state per forward and can recover tokens."""
    _mmtt_state: TokenState
    _mmtt_recover: bool

    def forward_features(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False):
        self._mmtt_state.reset()
        x = super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        return self._mmtt_state.recover(x) if self._mmtt_recover else x

    def pool(self, x: Tensor, pool_type: Optional[str] = None) -> Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == 'avg' and self.attn_pool is None and not self._mmtt_recover:
            # Reduced tokens stand for different numbers of patches: weight the mean by size.
            return self._mmtt_state.weighted_mean(x)
        return super().pool(x, pool_type)


_TOKEN_CLASSES: Dict[type, type] = {}


def _token_class(base: type) -> type:
    if base not in _TOKEN_CLASSES:
        _TOKEN_CLASSES[base] = type(f'Token{base.__name__}', (TokenModelMixin, base), {})
    return _TOKEN_CLASSES[base]


def apply_patch(model: VisionTransformer, method: str = 'transform', keep_ratio: float = 0.7,
                layers: Sequence[int] = (3, 6, 9), kappa: float = 0.55, tau: float = 150.0,
                recover: Union[bool, str] = False, metric: Optional[str] = None, preset: Optional[str] = None,
                **transform_kwargs) -> VisionTransformer:
    """Insert token reduction into a timm ``VisionTransformer``, in place.

    Args:
        model: a timm ViT whose blocks are ``timm.models.vision_transformer.Block`` with
            ``timm.layers.Attention`` (DeiT, DeiT-distilled, ViT-AugReg, MAE, DINOv2-style
            with LayerScale and register tokens).
        method: ``'transform'``, ``'tome'``, ``'evit'`` or ``'prune'``.
        keep_ratio: fraction of tokens kept at each reduction.
        layers: 0-based indices of the blocks after whose attention tokens are reduced, a
            sequence of ints (``(3,)`` for one block; a bare int is refused as ambiguous).
        kappa, tau: see :class:`mmtt.TokenTransform`.
        recover: make ``forward_features`` return all tokens: True (nearest-neighbour
            recovery, eq. 9-10) or a :class:`mmtt.TokenRecovery` mode (``'nearest'``,
            ``'assignment'``, ``'share'``).
        metric: features compared for similarity: ``'hidden'`` (the block's hidden states,
            the paper's) or ``'keys'`` (head-averaged keys, ToMe's). Default: keys for ToMe,
            hidden states otherwise.
        preset: a name from :data:`PRESETS`, overriding ``keep_ratio`` and ``layers``.
        **transform_kwargs: other :class:`mmtt.TokenTransform` arguments (``selection``,
            ``similarity``, ``orphans``).

    Returns:
        The same model object, patched.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f'model must be a timm VisionTransformer, got {type(model).__name__}')
    if getattr(model, '_mmtt_state', None) is not None:
        raise ValueError('model is already patched; call remove_patch(model) first')
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f'unknown preset={preset!r}; choose one of {sorted(PRESETS)}')
        keep_ratio, layers = PRESETS[preset]['keep_ratio'], PRESETS[preset]['layers']
    metric = metric or ('keys' if method == 'tome' else 'hidden')
    if metric not in ('hidden', 'keys'):
        raise ValueError(f"unknown metric={metric!r}; choose 'hidden' or 'keys'")
    depth = len(model.blocks)
    layers = check_layers('layers', layers)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f'layers={bad} out of range for a model with {depth} blocks')
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(block.attn) is not Attention:
            raise ValueError(f'block {i} is {type(block).__name__} with {type(block.attn).__name__}; '
                             'apply_patch supports timm Block with timm.layers.Attention')
    # Settings are checked even when no layer reduces: a typo must not pass silently.
    check_kwargs('apply_patch', transform_kwargs, TokenTransform.__init__)
    settings = dict(keep_ratio=keep_ratio, method=method, kappa=kappa, tau=tau, **transform_kwargs)
    TokenTransform(**settings)
    transforms = {i: TokenTransform(**settings) for i in layers}
    recovery = TokenRecovery('nearest' if recover is True else recover) if recover else None
    state = TokenState(model.num_prefix_tokens, recovery)
    for i, block in enumerate(model.blocks):
        block.__class__ = TokenBlock
        block.mmtt_transform = transforms.get(i)
        block._mmtt_state = state
        block._mmtt_metric = metric
        if i in transforms:
            block.attn.__class__ = TokenAttention
            block.attn._mmtt_score_stride = transforms[i].score_stride   # fixed at build time
    model._mmtt_base = type(model)
    model.__class__ = _token_class(type(model))
    model._mmtt_state = state
    model._mmtt_recover = bool(recover)
    model.mmtt_recovery = state.recovery
    return model


def remove_patch(model: VisionTransformer) -> VisionTransformer:
    """Undo :func:`apply_patch`, in place; the model is then exactly timm's again."""
    if not isinstance(model, TokenModelMixin):
        return model
    for block in model.blocks:
        del block.mmtt_transform, block._mmtt_state, block._mmtt_metric
        block.attn.__dict__.pop('_mmtt_capture', None)
        block.attn.__dict__.pop('_mmtt_keys', None)
        block.attn.__dict__.pop('_mmtt_score_stride', None)
        block.attn.__class__ = Attention
        block.__class__ = Block
    model.__class__ = model._mmtt_base
    del model._mmtt_state, model._mmtt_recover, model.mmtt_recovery, model._mmtt_base
    return model
