"""The table of token-reduction methods: one entry per ``method=`` name, read by
:class:`~mmtt.modules.TokenTransform` (checks, scores, keep floor, dispatch), the hosts (the
default similarity features, which methods run per window, which need the token grid) and the
tools (their method lists). Adding a method is one builder in :mod:`mmtt.functional` and one
entry here (timm's ``create_attn`` name -> class table is the model).
"""
import inspect
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from torch import Tensor

from ..functional import TokenMatrix, evit_matrix, prune_matrix, tome_matrix, transform_token_matrix
from ..functional.peers import cluster_grid, hourglass_matrix, pitome_matrix, tps_matrix


class MethodOptions(NamedTuple):
    """The settings a builder reads, as a value (``TokenTransform.options``), already checked
    and with the preset applied: see :class:`~mmtt.modules.TokenTransform` for each."""
    keep_ratio: float
    kappa: float
    tau: float
    selection: str
    similarity: str
    orphans: str
    top_k: Optional[int] = None
    anchor: bool = False
    distinct_stride: int = 1
    margin: Optional[float] = None
    protect: Optional[bool] = None
    cluster_iters: Optional[int] = None
    cluster_window: Optional[int] = None
    cluster_temperature: Optional[float] = None


class BuildInput(NamedTuple):
    """What :meth:`TokenTransform.forward` hands a method's builder (prefix tokens removed).

    Attributes:
        metric: ``[B, N, C']`` features compared for similarity.
        scores: ``[B, N]`` scores of the entry's ``scores`` kind (selection applied), or None.
        num_keep: ``TokenTransform.num_keep(N)``.
        sizes: ``[B, N]`` or None.
        num_prefix: prefix tokens before these N in the sequence (ToMe's A/B parity).
        grid_size: ``(h, w)`` of the N tokens while they still form the patch grid, or None.
    """
    metric: Tensor
    scores: Optional[Tensor]
    num_keep: int
    sizes: Optional[Tensor]
    num_prefix: int
    grid_size: Optional[Tuple[int, int]]


class MethodSpec(NamedTuple):
    """One method's facts.

    Attributes:
        name: the ``method=`` value.
        build: ``build(MethodOptions, BuildInput) -> TokenMatrix``.
        scores: attention scores it needs: ``'selection'`` (those the transform's
            ``selection`` names: eq. 2, class attention or none for uniform), ``'cls'``
            (always class attention) or None (it ranks tokens itself).
        min_keep_ratio: the smallest keep ratio one step can reach (0.5: bipartite matching
            merges at most half), refused at construction below it.
        keep_floor: ``keep_floor(n)``, fewest tokens kept out of n.
        metric: the similarity features hosts that offer a choice use by default:
            ``'hidden'`` (hidden states) or ``'keys'`` (head-averaged keys).
        options: the :class:`TokenTransform` options only this method reads (None unless
            set); setting one for another method is refused.
        mixes_scores: its builder applies ``selection='mixed'`` itself (else the module does).
        windows: runs per window in the Swin backbone.
        needs_grid: needs the token grid at its reduction (``TokenTransform.forward``'s
            ``grid_size``), so it cannot follow a reduction whose ``output_grid`` is None.
        layer_options: ``layer_options(index, depth)``: options set for block ``index`` of
            ``depth`` by hosts that call :meth:`TokenTransform.for_layer` (the authors'
            per-block schedule), for those left None.
        output_grid: ``output_grid(MethodOptions, (h, w))``: the grid its reduced tokens form
            (row-major), or None when they form none.
        summary: one line for the tools' help and the docs.
    """
    name: str
    build: Callable[[MethodOptions, BuildInput], TokenMatrix]
    scores: Optional[str]
    summary: str
    min_keep_ratio: float = 0.0
    keep_floor: Callable[[int], int] = lambda n: 1
    metric: str = 'hidden'
    options: Tuple[str, ...] = ()
    mixes_scores: bool = False
    windows: bool = False
    needs_grid: bool = False
    layer_options: Optional[Callable[[int, int], dict]] = None
    output_grid: Optional[Callable[[MethodOptions, Tuple[int, int]], Tuple[int, int]]] = None


def _transform(t: MethodOptions, inp: BuildInput) -> TokenMatrix:
    # With 'mixed', the builder ranks distinctness from the token similarities it needs for W
    # anyway (one N x N product instead of N x N plus N x M).
    return transform_token_matrix(inp.metric, inp.scores, inp.num_keep, t.kappa, t.tau, inp.sizes,
                                  similarity_kind=t.similarity, orphans=t.orphans, top_k=t.top_k,
                                  mixed=t.selection == 'mixed', anchor=bool(t.anchor),
                                  distinct_stride=t.distinct_stride)


# TokenTransform option -> hourglass_matrix keyword; where a config sets none, the builder's
# own default (Expedit-Segmenter's settings for Segmenter-L) applies.
CLUSTER_KEYWORDS = dict(cluster_iters='iterations', cluster_window='window',
                        cluster_temperature='temperature')
CLUSTER_DEFAULTS = {option: inspect.signature(hourglass_matrix).parameters[keyword].default
                    for option, keyword in CLUSTER_KEYWORDS.items()}


def clustering(t: MethodOptions) -> dict:
    """The options' Hourglass settings as :func:`~mmtt.functional.hourglass_matrix` keywords."""
    return {keyword: CLUSTER_DEFAULTS[option] if getattr(t, option) is None else getattr(t, option)
            for option, keyword in CLUSTER_KEYWORDS.items()}


def _hourglass(t: MethodOptions, inp: BuildInput) -> TokenMatrix:
    return hourglass_matrix(inp.metric, inp.grid_size, cluster_grid(inp.grid_size, t.keep_ratio),
                            inp.sizes, **clustering(t))


def _pitome(t: MethodOptions, inp: BuildInput) -> TokenMatrix:
    # Without a block position (a host that does not call for_layer) and no explicit setting:
    # pitome_vision's own defaults, margin 0.5 with protection.
    return pitome_matrix(inp.metric, inp.num_keep, inp.sizes,
                         margin=0.5 if t.margin is None else t.margin,
                         protect=True if t.protect is None else t.protect)


def _pitome_schedule(index: int, depth: int) -> dict:
    # hchautran/PiToMe algo/pitome/patch/deit.py: margin 0.75 - 0.75 l / L in block l, and
    # plain bipartite matching in energy order (no protection) in the first ceil(L / 2) blocks.
    return dict(margin=0.75 - 0.75 * index / depth, protect=index >= math.ceil(depth * 0.5))


def _half(n: int) -> int:
    # Bipartite matching merges at most half (ToMe's r <= N // 2); one token has no partner.
    return n - n // 2


_SPECS = (
    MethodSpec('transform', _transform, 'selection', mixes_scores=True, options=('top_k', 'anchor'),
               windows=True,
               summary='Token Transforming (the paper): many-to-many W, eq. 3-6 and 8'),
    MethodSpec('prune', lambda t, inp: prune_matrix(inp.scores, inp.num_keep, inp.sizes),
               'selection', summary='keep the top tokens by the selection score, drop the rest'),
    MethodSpec('evit', lambda t, inp: evit_matrix(inp.scores, inp.num_keep, inp.sizes), 'cls',
               keep_floor=lambda n: 2,
               summary='EViT: keep the most class-attended tokens, fuse the rest into one'),
    MethodSpec('tome', lambda t, inp: tome_matrix(inp.metric, inp.num_keep, inp.sizes,
                                                  num_prefix=inp.num_prefix),
               None, min_keep_ratio=0.5, keep_floor=_half, metric='keys',
               summary="ToMe: bipartite soft matching as ToMe's code runs it"),
    MethodSpec('tps', lambda t, inp: tps_matrix(inp.metric, inp.scores, inp.num_keep, inp.sizes),
               'selection',
               summary='TPS: keep the top tokens by the selection score, squeeze each pruned '
                       'token into its most similar kept one'),
    MethodSpec('pitome', _pitome, None, min_keep_ratio=0.5, keep_floor=_half, metric='keys',
               options=('margin', 'protect'), layer_options=_pitome_schedule,
               summary='PiToMe: energy score protects isolated tokens, the rest merged by '
                       'energy-ordered bipartite matching'),
    MethodSpec('hourglass', _hourglass, None, needs_grid=True, windows=True,
               options=tuple(CLUSTER_DEFAULTS),
               output_grid=lambda t, grid: cluster_grid(grid, t.keep_ratio),
               summary='Hourglass: soft k-means token clustering over the patch grid (needs the '
                       "grid); recover with TokenRecovery('reconstruct')"),
)

METHOD_SPECS: Dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
METHODS: Tuple[str, ...] = tuple(METHOD_SPECS)
WINDOW_METHODS: Tuple[str, ...] = tuple(s.name for s in _SPECS if s.windows)
# Options only some methods read, and which (for the constructor's refusal).
OPTION_OWNERS: Dict[str, Tuple[str, ...]] = {
    option: tuple(s.name for s in _SPECS if option in s.options)
    for spec in _SPECS for option in spec.options}


def method_spec(name: str) -> MethodSpec:
    """The entry for ``name``; ValueError naming the choices for an unknown one."""
    if not isinstance(name, str) or name not in METHOD_SPECS:
        raise ValueError(f'unknown method={name!r}; choose one of {", ".join(map(repr, METHODS))}')
    return METHOD_SPECS[name]


def default_metric(method: str) -> str:
    """``'keys'`` or ``'hidden'``: the similarity features a host uses for ``method`` when the
    user names none (keys for ToMe and PiToMe, whose code compares head-averaged keys)."""
    return method_spec(method).metric
