"""Token Transforming for timm ``VisionTransformer`` models (DeiT, ViT-AugReg, MAE, DINOv2...).

The patch swaps classes in place (``module.__class__``) and adds parameter-free submodules,
so the state dict keeps its keys and :func:`remove_patch` restores the model exactly.
Blocks without a reduction run timm's own code with ``log s`` as SDPA's ``attn_mask``, so
the fused attention kernel stays in use.

The patched model runs its blocks itself (``forward_features`` and ``forward_intermediates``
restate timm's block loop) because each block reads and replaces the forward's
:class:`~mmtt.modules.state.TokenState` through a :class:`~mmtt.modules.state.StateStep` made
per block: nothing about a forward is stored on the model, so threads may share it and
checkpointed blocks recompute exactly, and each block still returns a tensor, so forward hooks
on ``model.blocks[i]`` work as on timm's model.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..compat import check_versions

check_versions('timm')

import torch
import torch.utils.checkpoint as cp
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor

from ..functional import size_bias
from ..modules import TokenRecovery, TokenTransform
from ..modules.state import StateStep, TokenState
from .adapter import (
    BlockSettings,
    Capture,
    attend,
    check_host_blocks,
    patch_settings,
    reduce_tokens,
    reduces,
    swap_class,
    weighted_mean,
)
from .adapter import remove_patch as host_remove_patch

# The paper's schedules (Table 1), as 0-based block indices after whose attention tokens are
# reduced. "/0.7" keeps 70% of the tokens at each reduction.
SCHEDULES: Dict[str, dict] = {
    'deit-s/0.7': dict(keep_ratio=0.7, reduce_layers=(3, 6, 9)),
    'deit-s/0.6': dict(keep_ratio=0.6, reduce_layers=(3, 6, 9)),
    'vit-s/0.7': dict(keep_ratio=0.7, reduce_layers=(3, 6, 9)),
    'vit-s/0.5': dict(keep_ratio=0.5, reduce_layers=(3, 6, 9)),
}


class TokenAttention(Attention):
    """timm ``Attention`` that can also return what a reduction needs.

    ``forward(x, attn_mask, is_causal)`` is timm's. With ``capture`` (a
    :class:`~mmtt.hosts.adapter.Capture`) it restates timm's forward (projections, norms and
    gate in the same order) around :func:`mmtt.hosts.adapter.attend` and returns
    ``(out, Captured)``.
    """

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
                capture: Optional[Capture] = None):
        if capture is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        # gate, norm and attn_dim are read as the timm release has them (gate: timm >= 1.0.28).
        gate = getattr(self, 'gate', None)
        gate = gate(x).sigmoid() if gate is not None else None
        width = self.num_heads * self.head_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        out, captured = attend(q, k, v, attn_mask, capture,
                               dropout_p=self.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, width)
        norm = getattr(self, 'norm', None)
        out = norm(out) if norm is not None else out
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out)), captured


class TokenBlock(Block):
    """timm ``Block`` that applies the size bias and reduces tokens between attention and MLP
    where it has a transform (Fig. 3). It returns the tokens alone, as timm's block does (a
    forward hook on ``model.blocks[i]`` sees a tensor); the forward's :class:`TokenState`
    comes in and goes out through ``step``, a :class:`StateStep` the model's loop makes per
    block. Called without one it is timm's block."""
    token_transform: Optional[TokenTransform]
    _mmtt: BlockSettings

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
                step: Optional[StateStep] = None) -> Tensor:
        if step is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        state = step.state
        bias = size_bias(state.sizes, x.dtype)
        if bias is not None:
            attn_mask = bias if attn_mask is None else attn_mask + bias
        transform, settings = self.token_transform, self._mmtt
        if not reduces(transform, x.shape[1] - settings.num_prefix):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        # timm's Block.forward, with the reduction between attention and MLP.
        attended, captured = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal,
                                       capture=Capture.of(transform, keys=settings.keys))
        x = x + self.drop_path1(self.ls1(attended))
        x, step.next = reduce_tokens(x, state, transform, settings.recovery, settings.num_prefix,
                                     captured)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TokenModelMixin:
    """Mixed into the model's own class (``VisionTransformer`` or a subclass such as DeiT's
    distilled model): runs the blocks with explicit token state, recovers tokens if asked, and
    weights average pooling by token size."""
    token_recovery: Optional[TokenRecovery]
    _mmtt_parent: type
    _mmtt_recover: bool

    def _run_blocks(self, x: Tensor, attn_mask: Optional[Tensor], is_causal: bool,
                    num_blocks: Optional[int] = None, grid: Optional[Tuple[int, int]] = None):
        """Yield ``(x, state)`` after each block (timm's loop, state handed on explicitly);
        ``grid`` is the patch grid of the embedded tokens (for methods that cluster in space)."""
        if grid is not None and x.shape[1] - self.num_prefix_tokens != grid[0] * grid[1]:
            grid = None   # patch dropout removed tokens: they form no grid
        state = TokenState(grid=grid)
        # A tracing exporter hands the default is_causal=False in as a tensor; SDPA needs a bool.
        is_causal = bool(is_causal)
        checkpoint = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for block in list(self.blocks)[:num_blocks]:
            step = StateStep(state)
            if checkpoint:   # non-reentrant; a recomputation sets step.next to the same state
                x = cp.checkpoint(block, x, attn_mask, is_causal, step=step, use_reentrant=False)
            else:
                x = block(x, attn_mask, is_causal, step=step)
            state = step.next
            yield x, state

    def _embed(self, x: Tensor) -> Tensor:
        # timm's forward_features up to the blocks.
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))

    def _recover(self, x: Tensor, state: TokenState) -> Tensor:
        return self.token_recovery.recover(x, state) if self._mmtt_recover else x

    def _grid(self, height: int, width: int) -> Tuple[int, int]:
        # Python ints even under tracing (FLOP counting), where shapes are 0-dim tensors.
        return tuple(int(s) for s in self.patch_embed.dynamic_feat_size((height, width)))

    def _features(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                  is_causal: bool = False) -> Tuple[Tensor, TokenState]:
        grid = self._grid(*x.shape[-2:])
        x, state = self._embed(x), TokenState()
        for x, state in self._run_blocks(x, attn_mask, is_causal, grid=grid):
            pass
        return self._recover(self.norm(x), state), state

    def forward_features(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                         is_causal: bool = False) -> Tensor:
        return self._features(x, attn_mask, is_causal)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False,
                     sizes: Optional[Tensor] = None) -> Tensor:
        """timm's ``forward_head``; with ``sizes`` (``[B, P + M]``, from the same forward) an
        average pool counts each reduced token ``size`` times. ``model(x)`` passes them; called
        alone on reduced tokens without ``sizes``, the mean is timm's unweighted one."""
        weighted = (sizes is not None and self.global_pool == 'avg' and self.attn_pool is None
                    and not self._mmtt_recover)
        if not weighted:
            return super().forward_head(x, pre_logits=pre_logits)
        x = self.head_drop(self.fc_norm(weighted_mean(x, sizes, self.num_prefix_tokens)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False):
        x, state = self._features(x, attn_mask, is_causal)
        return self.forward_head(x, sizes=state.sizes)

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False, output_dict: bool = False,
                              attn_mask: Optional[Tensor] = None, is_causal: bool = False):
        """timm's ``forward_intermediates`` (same arguments and outputs). Intermediates after a
        reduction are recovered to the full token grid when the patch has ``recover``; without
        it they have fewer tokens, so only ``output_fmt='NLC'`` can hold them."""
        from timm.models._features import feature_take_indices
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt={output_fmt!r} must be 'NCHW' or 'NLC'")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        intermediates = []
        x, state = self._embed(x), TokenState()
        blocks = max_index + 1 if stop_early else None
        grid = self._grid(height, width)
        for i, (x, state) in enumerate(self._run_blocks(x, attn_mask, is_causal, blocks, grid)):
            if i in take:
                y = self._recover(self.norm(x) if norm else x, state)
                if output_fmt == 'NCHW' and state.sizes is not None and not self._mmtt_recover:
                    raise ValueError(f"output_fmt='NCHW' after a reduction (block {i}) needs the "
                                     "patch's recover option; use output_fmt='NLC' for the "
                                     'reduced tokens')
                intermediates.append(y)
        p = self.num_prefix_tokens
        prefix = [y[:, :p] for y in intermediates] if p else None
        intermediates = [y[:, p:] for y in intermediates]
        if output_fmt == 'NCHW':
            h, w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        final = None if intermediates_only else self._recover(self.norm(x), state)
        if output_dict:
            out = {'image_intermediates': intermediates}
            if prefix is not None and return_prefix_tokens:
                out['image_intermediates_prefix'] = prefix
            if final is not None:
                out['image_features'] = final
            return out
        if return_prefix_tokens and prefix is not None:
            intermediates = list(zip(intermediates, prefix))
        return intermediates if intermediates_only else (final, intermediates)

    def __reduce_ex__(self, protocol):
        # The class is made by _token_class; pickle rebuilds it from timm's (importable) class.
        return _restore_patched, (self._mmtt_parent,), dict(self.__dict__)


_TOKEN_CLASSES: Dict[type, type] = {}


def _token_class(base: type) -> type:
    if base not in _TOKEN_CLASSES:
        _TOKEN_CLASSES[base] = type(f'Token{base.__name__}', (TokenModelMixin, base),
                                    {'__module__': __name__})
    return _TOKEN_CLASSES[base]


def _restore_patched(base: type):
    cls = _token_class(base)
    return cls.__new__(cls)


def apply_patch(model: VisionTransformer, method: Optional[str] = None, keep_ratio: float = 0.7,
                reduce_layers: Sequence[int] = (3, 6, 9), kappa: Optional[float] = None, tau: Optional[float] = None,
                recover: Union[bool, str, dict] = False, metric: Optional[str] = None,
                preset: Optional[str] = None, schedule: Optional[str] = None,
                layers: Optional[Sequence[int]] = None,
                **transform_kwargs) -> VisionTransformer:
    """Insert token reduction into a timm ``VisionTransformer``, in place.

    Args:
        model: a timm ViT whose blocks are ``timm.models.vision_transformer.Block`` with
            ``timm.layers.Attention`` (DeiT, DeiT-distilled, ViT-AugReg, MAE, DINOv2-style
            with LayerScale and register tokens).
        method: a name from :data:`mmtt.modules.METHODS`: ``'transform'`` (the default),
            ``'tome'``, ``'evit'``, ``'prune'``, ``'tps'``, ``'pitome'`` or ``'hourglass'``.
        keep_ratio: fraction of tokens kept at each reduction.
        reduce_layers: 0-based indices of the blocks after whose attention tokens are reduced,
            a sequence of ints (``(3,)`` for one block; a bare int is refused as ambiguous).
            The mmseg and mmdet backbones' config key of the same name.
        kappa, tau: see :class:`mmtt.TokenTransform`.
        recover: make ``forward_features`` return all tokens: True (the preset's recovery
            mode; nearest-neighbour recovery, eq. 9-10, without a preset), a
            :class:`mmtt.TokenRecovery` mode (``'nearest'``,
            ``'assignment'``, ``'share'``, ``'reconstruct'``), or its arguments as a dict
            (``dict(mode='reconstruct', temperature=10)``).
        metric: features compared for similarity: ``'hidden'`` (the block's hidden states,
            the paper's) or ``'keys'`` (head-averaged keys, ToMe's). Default: the method's entry
            in :data:`mmtt.modules.METHOD_SPECS` (keys for ToMe and PiToMe, hidden states
            otherwise).
        preset: ``'paper'`` or ``'fast'`` (:data:`mmtt.modules.presets.PRESETS`): fills in the
            Token Transforming options left out. None: the paper's values.
        schedule: a name from :data:`SCHEDULES`, overriding ``keep_ratio`` and ``reduce_layers``
            (also accepted as ``preset=``, its name before the method presets).
        layers: the earlier name of ``reduce_layers``, still accepted.
        **transform_kwargs: other :class:`mmtt.TokenTransform` arguments (``selection``,
            ``similarity``, ``orphans``, ``top_k``, ``score_stride``, ``anchor``...).

    Returns:
        The same model object, patched.
    """
    depth = check_host_blocks(model, VisionTransformer, TokenModelMixin, Block, Attention, 'timm')
    patch = patch_settings(SCHEDULES, depth, f'a model with {depth} blocks', method=method,
                           keep_ratio=keep_ratio, reduce_layers=reduce_layers, kappa=kappa, tau=tau,
                           metric=metric, preset=preset, schedule=schedule, recover=recover,
                           layers=layers,
                           transform_kwargs=transform_kwargs)
    block_settings = BlockSettings(model.num_prefix_tokens, patch.recovery, patch.keys)
    for block, transform in zip(model.blocks, patch.layer_transforms(depth)):
        swap_class(block, TokenBlock, token_transform=transform, _mmtt=block_settings)
        if transform is not None:
            swap_class(block.attn, TokenAttention)
    swap_class(model, _token_class(type(model)), _mmtt_recover=bool(recover),
               token_recovery=patch.recovery)
    return model


def remove_patch(model: VisionTransformer) -> VisionTransformer:
    """Undo :func:`apply_patch`, in place; the model is then exactly timm's again
    (:func:`mmtt.remove_patch`, which undoes any host's patch)."""
    return host_remove_patch(model)
