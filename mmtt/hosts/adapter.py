"""The host adapter: what every host (timm, LV-ViT, transformers, the mmseg, mmdet and
mmpretrain backbones) shares. Settings are resolved once (:func:`patch_settings` for
``apply_patch``, :func:`config_reduction` for config keys, :func:`layer_transforms` for the
per-block schedule); a reducing block asks its attention for scores in one shape
(:class:`Capture`, :func:`attend`) and reduces with :func:`reduce_tokens`; classes are swapped
with :func:`swap_class` and every patch is undone by :func:`remove_patch`. A host file holds
only what differs: which classes, where the attention's projections are, its loop.

State flows with the data (:mod:`mmtt.modules.state`): nothing about a forward is written on
a module, so one model serves concurrent threads, and a block recomputed by
``torch.utils.checkpoint`` sees the same state it saw the first time.
"""
import types
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import attention_with_scores
from ..functional._checks import check_kwargs, check_layers
from ..modules.methods import default_metric
from ..modules.presets import PRESETS
from ..modules.state import TokenState
from ..modules.token_recovery import TokenRecovery
from ..modules.token_transform import TokenTransform
from ._build import build_module


class BlockSettings(NamedTuple):
    """What a patched block knows besides its transform, fixed when the host is built (a
    tuple, not a module attribute of each block, so the recovery module is not re-registered
    as a child of every block).

    Attributes:
        num_prefix: leading tokens never reduced (class, distillation, register tokens).
        recovery: the model's ``TokenRecovery``, or None when nothing is recovered.
        keys: compare head-averaged keys (ToMe's metric) instead of hidden states.
    """
    num_prefix: int
    recovery: Optional[TokenRecovery] = None
    keys: bool = False


class Capture(NamedTuple):
    """What a reducing block asks its attention to return beside the output.

    Attributes:
        scores: ``'informative'`` (eq. 2), ``'cls'`` or None: ``TokenTransform.score_kind``.
        keys: also the head-averaged keys ``[B, N, d]`` (ToMe's similarity features).
        stride: ``TokenTransform.score_stride``.
    """
    scores: Optional[str] = None
    keys: bool = False
    stride: int = 1

    @classmethod
    def of(cls, transform: TokenTransform, keys: bool = False) -> 'Capture':
        return cls(transform.score_kind, keys, transform.score_stride)


class Captured(NamedTuple):
    """What the attention returned for a :class:`Capture`: ``scores [B, N]``, ``keys [B, N, d]``."""
    scores: Optional[Tensor] = None
    keys: Optional[Tensor] = None


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], capture: Capture,
           dropout_p: float = 0.0, scale: Optional[float] = None) -> Tuple[Tensor, Captured]:
    """Attention of a reducing block: ``([B, heads, N, d], Captured)``.

    Without scores to capture (ToMe, uniform selection) or with ``capture.stride > 1`` the
    output comes from the fused kernel; otherwise from
    :func:`mmtt.functional.attention_with_scores`, which has no dropout (a reducing block is
    an inference-time edit).

    Args:
        q, k, v: ``[B, heads, N, d]``.
        bias: additive logits bias (size bias, relative position, shift mask) or None.
        scale: logits scale; None is ``d ** -0.5``.
    """
    if capture.scores is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                             scale=scale)
        scores = None
    else:
        if scale is not None:   # attention_with_scores scales by d ** -0.5
            q = q * (scale * q.shape[-1] ** 0.5)
        out, informative, cls = attention_with_scores(q, k, v, bias, score_stride=capture.stride)
        scores = informative if capture.scores == 'informative' else cls
    return out, Captured(scores, k.mean(dim=1) if capture.keys else None)


def start_state(x: Tensor, num_prefix: int, grid: Optional[Sequence[int]]) -> TokenState:
    """The state a forward starts from: ``grid`` ``(h, w)`` of the non-prefix tokens of ``x``
    (``[B, P + N, C]``) when they form it (``h w = N``), for the methods that cluster in space,
    else no grid (patch dropout, a sampling model without one)."""
    if grid is not None:
        grid = tuple(int(g) for g in grid)   # Python ints even under tracing (FLOP counting)
        if grid[0] * grid[1] != int(x.shape[1]) - num_prefix:
            grid = None
    return TokenState(grid=grid)


def reduces(transform: Optional[TokenTransform], num_tokens: int) -> bool:
    """Whether ``transform`` removes any of ``num_tokens`` reducible tokens (the shortcut every
    host takes to run its own code unchanged)."""
    return transform is not None and transform.num_keep(num_tokens) < num_tokens


def reduce_tokens(x: Tensor, state: TokenState, transform: TokenTransform,
                  recovery: Optional[TokenRecovery], num_prefix: int,
                  captured: Captured = Captured()) -> Tuple[Tensor, TokenState]:
    """Apply ``transform`` to ``x`` (``[B, P + N, C]``): the reduced tokens and the new state."""
    out = transform(x, state.sizes, num_prefix=num_prefix, scores=captured.scores,
                    metric=captured.keys, validate_sizes=False,   # sizes from our own reductions
                    grid_size=state.grid)
    if out.matrix is None:
        return x, state
    index, relation = state.index, state.relation
    if recovery is not None and recovery.soft:
        relation = recovery.compose_relation(relation, recovery.relation(x, out.tokens, num_prefix))
    elif recovery is not None:
        step = recovery.index(x, out.tokens, num_prefix, out.matrix)
        index = recovery.compose(index, step)
    return out.tokens, TokenState(out.sizes, index, relation, transform.reduced_grid(state.grid))


def weighted_mean(x: Tensor, sizes: Optional[Tensor], num_prefix: int) -> Tensor:
    """Mean of the non-prefix tokens of ``x`` (``[B, P + M, C]``), each counted ``size`` times:
    ``[B, C]``."""
    tokens = x[:, num_prefix:]
    if sizes is None:
        return tokens.mean(dim=1)
    weights = sizes[:, num_prefix:, None].to(x.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1)


def layer_transforms(transform: Optional[TokenTransform], reduce_layers: Sequence[int],
                     depth: int) -> Tuple[Optional[TokenTransform], ...]:
    """The transform of each of ``depth`` blocks: ``transform`` with the method's per-block
    schedule (:meth:`TokenTransform.for_layer`, PiToMe's) in the blocks of ``reduce_layers``,
    None elsewhere (and everywhere when ``transform`` keeps every token)."""
    if transform is None or transform.keep_ratio >= 1:
        return (None,) * depth
    return tuple(transform.for_layer(i, depth) if i in reduce_layers else None for i in range(depth))


def swap_class(module: nn.Module, cls: type, **attrs: Any) -> None:
    """Make ``module`` a ``cls`` in place (a subclass of its class: parameters and state-dict
    keys stay) and set ``attrs`` on it, recording both so :func:`remove_patch` undoes them."""
    if '_mmtt_parent' not in module.__dict__:
        module._mmtt_parent = type(module)
        module._mmtt_added = tuple(attrs)
    else:
        module._mmtt_added = tuple(dict.fromkeys(module._mmtt_added + tuple(attrs)))
    _set_class(module, cls)
    for name, value in attrs.items():
        setattr(module, name, value)


def _set_class(module: nn.Module, cls: type) -> None:
    # An accelerate hook (device_map=...) calls the forward it saved as _old_forward: re-bind it
    # to the new class's forward.
    module.__class__ = cls
    if '_old_forward' in vars(module):
        module._old_forward = types.MethodType(cls.forward, module)


def record_parent(module: nn.Module, added: Sequence[str], has_host: bool = True) -> None:
    """Record, for a backbone built as an mmtt class, the host class it extends (the first
    class of its MRO outside mmtt) and the attributes it adds, so :func:`remove_patch` turns
    it into the host's own backbone; ``has_host=False`` for a model with no host class to
    return to (DPT's hybrid backbone), which :func:`remove_patch` refuses."""
    parent = next(c for c in type(module).__mro__ if not c.__module__.startswith('mmtt.'))
    module._mmtt_parent = parent if has_host else None
    module._mmtt_added = tuple(added)


def remove_patch(model: nn.Module) -> nn.Module:
    """Undo every mmtt patch in ``model``, in place, whichever host it came from (an
    ``apply_patch`` or an mmtt backbone built from a config): each swapped module gets its
    class back and loses what mmtt added, so the model computes exactly what the host's does.
    A model without a patch is returned unchanged."""
    for module in model.modules():
        if '_mmtt_parent' in module.__dict__ and module._mmtt_parent is None:
            raise ValueError(f'{type(module).__name__} is a model of mmtt with no host class to '
                             'return to; build it with reduce_layers=[] for the unreduced model')
    for module in list(model.modules()):
        parent = module.__dict__.pop('_mmtt_parent', None)
        if parent is None:
            continue
        for name in module.__dict__.pop('_mmtt_added'):
            if hasattr(module, name):
                delattr(module, name)
        _set_class(module, parent)
    return model


def check_recovery(token_recovery: Optional[dict], needed: bool, why: str) -> None:
    """A backbone whose outputs need the full token grid must have a ``token_recovery``."""
    if needed and token_recovery is None:
        raise ValueError(f'token_recovery is required: {why}')


def check_reduce_layers(key: str, layers: Sequence[int], depth: int, what: str) -> Tuple[int, ...]:
    """``layers`` as sorted unique indices in ``[0, depth)``; ``what`` names the depth in the
    error (e.g. ``'num_layers=12'``)."""
    layers = check_layers(key, layers)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f'{key}={bad} out of range for {what}')
    return tuple(layers)


def check_host_blocks(model: nn.Module, host: type, patched: type, block: type, attn: type,
                      library: str) -> int:
    """The depth of ``model.blocks``, after the checks every ``apply_patch`` of a block-list
    model makes: ``model`` is a ``host``, not already ``patched``, and every block is exactly
    ``block`` with ``attn`` (a subclass may override what the patch rewrites). ValueError
    naming what is wrong; ``library`` names the host library in it."""
    if not isinstance(model, host):
        raise ValueError(f'model must be a {library} {host.__name__}, got {type(model).__name__}')
    if isinstance(model, patched):
        raise ValueError('model is already patched; call mmtt.remove_patch(model) first')
    for i, b in enumerate(model.blocks):
        if type(b) is not block or type(b.attn) is not attn:
            raise ValueError(f'block {i} is {type(b).__name__} with {type(b.attn).__name__}; '
                             f'apply_patch supports {library} {block.__name__} with '
                             f'{library} {attn.__name__}')
    return len(model.blocks)


class PatchSettings(NamedTuple):
    """What an ``apply_patch`` resolved from its arguments (see :func:`patch_settings`).

    Attributes:
        key: the argument name the layers came under (``'reduce_layers'`` or ``'layers'``).
        reduce_layers: sorted block indices.
        transform: ``TokenTransform`` arguments, already checked.
        keys: compare head-averaged keys (the resolved ``metric`` is ``'keys'``).
        recovery: the ``TokenRecovery`` for ``recover``, or None.
    """
    key: str
    reduce_layers: Tuple[int, ...]
    transform: Dict[str, Any]
    keys: bool
    recovery: Optional[TokenRecovery]

    def layer_transforms(self, depth: int) -> Tuple[Optional[TokenTransform], ...]:
        """The transform of each of ``depth`` blocks (see :func:`layer_transforms`)."""
        return layer_transforms(TokenTransform(**self.transform), self.reduce_layers, depth)


class ConfigReduction(NamedTuple):
    """What a config-built backbone resolved from its reduction keys (see :func:`config_reduction`).

    Attributes:
        reduce_layers: sorted layer indices.
        transform: the built ``TokenTransform`` (built even when no layer reduces, so a bad
            setting fails at build time), or None.
        recovery: the built ``TokenRecovery``, or None.
        keys: compare head-averaged keys (the resolved ``metric`` is ``'keys'``).
    """
    reduce_layers: Tuple[int, ...]
    transform: Optional[TokenTransform]
    recovery: Optional[TokenRecovery]
    keys: bool


def config_reduction(token_transform: Optional[Mapping[str, Any]], reduce_layers: Sequence[int],
                     token_recovery: Optional[Mapping[str, Any]], metric: Optional[str], depth: int,
                     what: str) -> ConfigReduction:
    """The reduction keys every config-built classification backbone shares, checked:
    ``reduce_layers`` against ``depth`` (``what`` names it in the error), the modules built from
    their configs (every key checked) and ``metric`` (default from the method table)."""
    reduce_layers = check_reduce_layers('reduce_layers', reduce_layers, depth, what)
    if reduce_layers and token_transform is None:
        raise ValueError('reduce_layers is set but token_transform is None')
    transform = build_module('token_transform', token_transform)
    recovery = build_module('token_recovery', token_recovery)
    if metric is None:
        metric = default_metric(transform.method) if transform is not None else 'hidden'
    if metric not in ('hidden', 'keys'):
        raise ValueError(f"unknown metric={metric!r}; choose 'hidden' or 'keys'")
    return ConfigReduction(reduce_layers, transform, recovery, metric == 'keys')


def patch_settings(schedules: Mapping[str, dict], depth: int, what: str, *, method: Optional[str],
                   keep_ratio: float, reduce_layers: Optional[Sequence[int]], kappa: Optional[float],
                   tau: Optional[float], metric: Optional[str], preset: Optional[str],
                   schedule: Optional[str] = None,
                   recover: Union[bool, str, Mapping[str, Any]] = False,
                   layers: Optional[Sequence[int]] = None,
                   transform_kwargs: Optional[Mapping[str, Any]] = None) -> PatchSettings:
    """The arguments every ``apply_patch`` shares, checked: ``preset`` (a name from
    :data:`mmtt.modules.presets.PRESETS`, filling in the method options left out; a name from
    ``schedules`` is taken as ``schedule``, its meaning before the method presets), ``schedule``
    (from ``schedules``, overriding ``keep_ratio`` and ``reduce_layers``), ``layers`` (the earlier
    name of ``reduce_layers``), ``metric`` (default from the method table), the layer indices
    against ``depth`` (``what`` names it in the error), every ``TokenTransform`` setting (checked
    even when no block reduces: a typo must not pass silently) and ``recover`` (True: the
    preset's recovery mode, eq. 9 without one; a recovery mode; or ``TokenRecovery`` arguments
    as a dict, e.g. ``dict(mode='reconstruct', temperature=10)``)."""
    if preset in schedules and preset not in PRESETS:
        if schedule is not None:
            raise ValueError(f'preset={preset!r} is a schedule; give it as schedule= alone')
        preset, schedule = None, preset
    if preset is not None and preset not in PRESETS:
        raise ValueError(f'unknown preset={preset!r}; choose one of {", ".join(map(repr, PRESETS))}, '
                         f'or give a schedule ({", ".join(sorted(schedules))})')
    if layers is not None:
        reduce_layers = layers
    if schedule is not None:
        if schedule not in schedules:
            raise ValueError(f'unknown schedule={schedule!r}; choose one of {sorted(schedules)}')
        keep_ratio, reduce_layers = schedules[schedule]['keep_ratio'], schedules[schedule]['reduce_layers']
    key = 'layers' if layers is not None else 'reduce_layers'
    if reduce_layers is None:
        raise ValueError(f'{key}=None: give the blocks to reduce after, or a schedule '
                         f'({", ".join(sorted(schedules))})')
    transform_kwargs = dict(transform_kwargs or {})
    check_kwargs('apply_patch', transform_kwargs, TokenTransform.__init__)
    settings = dict(keep_ratio=keep_ratio, method=method, kappa=kappa, tau=tau, preset=preset,
                    **transform_kwargs)
    method = TokenTransform(**settings).method   # checks every setting, resolves the preset
    metric = metric or default_metric(method)
    if metric not in ('hidden', 'keys'):
        raise ValueError(f"unknown metric={metric!r}; choose 'hidden' or 'keys'")
    reduce_layers = check_reduce_layers(key, reduce_layers, depth, what)
    if recover is True:
        recover = PRESETS[preset].recovery if preset is not None else 'nearest'
    if isinstance(recover, Mapping):
        check_kwargs('recover', recover, TokenRecovery.__init__)
        recovery = TokenRecovery(**recover)
    else:
        recovery = TokenRecovery(recover) if recover else None
    return PatchSettings(key, reduce_layers, settings, metric == 'keys', recovery)
