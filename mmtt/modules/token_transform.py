"""The registry-facing token-reduction module: one config dict picks the method."""
from typing import NamedTuple, Optional, Tuple

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..functional import ORPHAN_RULES, SIMILARITIES, TokenMatrix, mixed_scores, uniform_scores
from ..functional._checks import (
    check_choice,
    check_distinct_stride,
    check_floating,
    check_kappa,
    check_keep_ratio,
    check_positive_sizes,
    check_score_stride,
    check_tau,
    check_tensor,
    check_top_k,
    is_int,
    is_real,
)
from ..functional.peers import check_clustering, check_grid_size
from .methods import (
    CLUSTER_DEFAULTS,
    METHODS,
    OPTION_OWNERS,
    BuildInput,
    MethodOptions,
    MethodSpec,
    method_spec,
)
from .presets import PRESETS, preset_settings

SELECTIONS = ('informative', 'cls', 'uniform', 'mixed')


class Reduction(NamedTuple):
    """What :class:`TokenTransform` returns.

    Attributes:
        tokens: ``[B, P + M, C]``: the P prefix tokens unchanged, then the M reduced tokens.
        sizes: ``[B, P + M]`` token sizes for the size bias of later attention layers, or
            None if nothing was reduced (and none were given).
        matrix: the :class:`TokenMatrix` applied to the non-prefix tokens, or None for a no-op.
    """
    tokens: Tensor
    sizes: Optional[Tensor]
    matrix: Optional[TokenMatrix]


@MODELS.register_module()
class TokenTransform(nn.Module):
    """Reduces tokens to ``keep_ratio`` of their number; it has no parameters.

    Placed between a block's attention and its MLP (Fig. 3). Prefix tokens (class,
    distillation, register) are passed through and never reduced. Each method's facts (its
    builder, the scores it needs, its keep floor, its options) are its entry in
    :data:`mmtt.modules.methods.METHOD_SPECS`.

    The options a preset sets (``method``, ``kappa``, ``tau``, ``selection``, ``similarity``,
    ``orphans``, ``top_k``, ``score_stride``, ``anchor``, ``distinct_stride``) default to None:
    the value of ``preset`` (:data:`mmtt.modules.presets.PRESETS`), or without one the paper's
    (``'transform'``, 0.55, 150, ``'informative'``, ``'cosine'``, ``'spread'``, None, 1, False, 1).
    An option given explicitly wins over the preset's.

    Args:
        keep_ratio: fraction of the non-prefix tokens kept, in (0, 1]; 1 is an exact no-op.
        preset: ``'paper'`` or ``'fast'`` (see ``docs/presets.md``), or None.
        method: ``'transform'`` (Token Transforming, many-to-many), ``'prune'``, ``'evit'``
            (keep the most class-attended, fuse the rest into one token), ``'tome'``
            (bipartite soft matching as ToMe's code runs it, A/B split and output order
            included, see :func:`mmtt.functional.tome_matrix`; needs ``keep_ratio >= 0.5``),
            ``'tps'`` (keep the top tokens by ``selection``, squeeze the others into their
            most similar kept token, :func:`mmtt.functional.tps_matrix`), ``'pitome'``
            (energy-protected bipartite merging, :func:`mmtt.functional.pitome_matrix`;
            needs ``keep_ratio >= 0.5``) or ``'hourglass'`` (soft k-means clustering of the
            token grid to ``sqrt(keep_ratio)`` of each side,
            :func:`mmtt.functional.hourglass_matrix`; needs ``grid_size`` in :meth:`forward`:
            the patch grid, or the centre grid of an earlier Hourglass reduction, so it cannot
            follow another method's reduction).
        kappa: similarity gate of eq. 3. The paper's ablation (Table 6) peaks at 0.5-0.6.
        tau: softmax temperature of eq. 5. Table 6: best at 150, flat from 100 to 250.
        selection: how informative tokens (transform) or kept tokens (prune, tps) are chosen:
            ``'informative'`` (eq. 2, column sums of the attention map), ``'cls'`` (class-token
            attention), ``'uniform'`` (evenly spaced): Table 8; or ``'mixed'``, an option beyond
            the paper: rank of eq. 2 plus rank of distinctness (:func:`mmtt.functional.mixed_scores`).
        similarity: ``'cosine'`` (eq. 4) or ``'euclidean'`` (Table 8's alternative).
        orphans: ``'spread'`` (the paper's formulas) or ``'nearest'``; see
            :func:`mmtt.functional.transform_matrix`.
        top_k: None (the paper's dense W) or k: each column of W keeps its k largest
            assignment shares, so applying W costs ``k N C`` instead of ``M N C`` (an option
            beyond the paper for long sequences; see
            :func:`mmtt.functional.transform_token_matrix`). Only with ``method='transform'``.
        anchor: False (the paper) or True: each informative token's column of W is one-hot on
            its own row, so only the other N - M tokens are compared with the informative
            ones (an option beyond the paper, a fraction of the build's work at mild keep
            ratios; see :func:`mmtt.functional.transform_token_matrix`). Only with
            ``method='transform'`` and not in Swin's windows.
        distinct_stride: with ``selection='mixed'``: 1 (exact) or s > 1: a token's
            distinctness is its similarity to the closest of every s-th token, ``1 / s`` of the
            ``N x N`` comparison (:func:`mmtt.functional.distinctness_scores`).
        score_stride: 1 (the paper's eq. 2): the informative scores sum every query row of
            the attention map. s > 1, an option beyond the paper: the host keeps its fused
            attention kernel and the column sums come from every s-th query row
            (:func:`mmtt.functional.sampled_attention_scores`), 1 / s of the work.
        margin: PiToMe's energy margin in [-1, 1], only with ``method='pitome'``. None: the
            authors' DeiT schedule ``0.75 - 0.75 l / L`` where the host gives the block
            position (:meth:`for_layer`; timm and mmseg do), else their function default 0.5.
        protect: PiToMe only: True protects the lowest-energy tokens (PiToMe proper), False
            matches all tokens in energy order. None: the authors' DeiT schedule (False in the
            first ``ceil(L / 2)`` blocks) where the host gives the block position, else True.
        cluster_iters, cluster_window, cluster_temperature: Hourglass only: its k-means rounds,
            the odd side of each token's neighbourhood of centres, and the factor on squared
            distances (Expedit's ``n_iters``, ``window_size``, ``temperture``; for Swin their
            ``1 / temperture``). None: Expedit-Segmenter's 5, 5 and 0.02.
    """

    def __init__(self, keep_ratio: float = 0.7, method: Optional[str] = None,
                 kappa: Optional[float] = None, tau: Optional[float] = None,
                 selection: Optional[str] = None, similarity: Optional[str] = None,
                 orphans: Optional[str] = None, top_k: Optional[int] = None,
                 score_stride: Optional[int] = None, margin: Optional[float] = None,
                 protect: Optional[bool] = None, cluster_iters: Optional[int] = None,
                 cluster_window: Optional[int] = None,
                 cluster_temperature: Optional[float] = None, anchor: Optional[bool] = None,
                 distinct_stride: Optional[int] = None, preset: Optional[str] = None) -> None:
        super().__init__()
        if preset is not None and not isinstance(preset, str):
            raise ValueError(f'preset={preset!r} must be a name: {", ".join(map(repr, PRESETS))}')
        # The options left None take the preset's values (None: the paper's, any method).
        resolved = preset_settings(preset, dict(
            method=method, kappa=kappa, tau=tau, selection=selection, similarity=similarity,
            orphans=orphans, top_k=top_k, score_stride=score_stride, anchor=anchor,
            distinct_stride=distinct_stride))
        method, kappa, tau = resolved['method'], resolved['kappa'], resolved['tau']
        selection, similarity, orphans = resolved['selection'], resolved['similarity'], resolved['orphans']
        top_k, score_stride, anchor = resolved['top_k'], resolved['score_stride'], resolved['anchor']
        distinct_stride = resolved['distinct_stride']
        check_keep_ratio(keep_ratio)   # numpy floats too: np.float32(0.7) is a valid ratio
        check_choice('method', method, METHODS)
        check_choice('selection', selection, SELECTIONS)
        check_choice('similarity', similarity, SIMILARITIES)
        check_choice('orphans', orphans, ORPHAN_RULES)
        check_kappa(kappa)
        check_tau(tau)
        check_score_stride(score_stride)
        if top_k is not None:
            check_top_k(top_k)
        if margin is not None and (not is_real(margin) or not -1.0 <= float(margin) <= 1.0):
            raise ValueError(f'margin={margin!r} must be None or a number in [-1, 1] (PiToMe '
                             'shifts cosine similarities by it)')
        if protect is not None and not isinstance(protect, bool):
            raise ValueError(f'protect={protect!r} must be None, True or False')
        if not isinstance(anchor, bool):
            raise ValueError(f'anchor={anchor!r} must be True or False')
        check_distinct_stride(distinct_stride)
        if distinct_stride != 1 and selection != 'mixed':
            raise ValueError(f'distinct_stride={distinct_stride} applies only to '
                             f"selection='mixed', got selection={selection!r}")
        clustering = dict(cluster_iters=cluster_iters, cluster_window=cluster_window,
                          cluster_temperature=cluster_temperature)
        check_clustering(*(CLUSTER_DEFAULTS[k] if v is None else v for k, v in clustering.items()),
                         names=tuple(clustering))
        # anchor=False is every method's behaviour; only True is the transform's option.
        options = dict(top_k=top_k, margin=margin, protect=protect, anchor=anchor or None, **clustering)
        for key, owners in OPTION_OWNERS.items():
            if options.get(key) is not None and method not in owners:
                names = ' or '.join(f'method={m!r}' for m in owners)
                raise ValueError(f'{key}={options[key]} applies only to {names}, got '
                                 f'method={method!r}')
        spec = method_spec(method)
        if keep_ratio < spec.min_keep_ratio:
            raise ValueError(f'keep_ratio={keep_ratio} is below {spec.min_keep_ratio}, which '
                             f'method={method!r} cannot reach in one step (bipartite matching '
                             'merges at most half)')
        self.keep_ratio = float(keep_ratio)
        self.method = method
        self.kappa = float(kappa)
        self.tau = float(tau)
        self.selection = selection
        self.similarity = similarity
        self.orphans = orphans
        self.top_k = top_k
        self.score_stride = score_stride
        self.margin = None if margin is None else float(margin)
        self.protect = protect
        self.cluster_iters = cluster_iters
        self.cluster_window = cluster_window
        self.cluster_temperature = None if cluster_temperature is None else float(cluster_temperature)
        self.anchor = anchor
        self.distinct_stride = distinct_stride
        self.preset = preset

    @property
    def spec(self) -> MethodSpec:
        """This method's :class:`~mmtt.modules.methods.MethodSpec`."""
        return method_spec(self.method)

    @property
    def options(self) -> MethodOptions:
        """The settings the method's builder reads, as a value."""
        return MethodOptions(self.keep_ratio, self.kappa, self.tau, self.selection, self.similarity,
                             self.orphans, self.top_k, self.anchor, self.distinct_stride,
                             self.margin, self.protect, self.cluster_iters, self.cluster_window,
                             self.cluster_temperature)

    @property
    def score_kind(self) -> Optional[str]:
        """Which attention scores :meth:`forward` needs from the host: ``'informative'``,
        ``'cls'`` or None. Hosts compute only what is asked for."""
        kind = self.spec.scores
        if kind != 'selection':
            return kind
        if self.selection == 'uniform':
            return None
        return 'informative' if self.selection == 'mixed' else self.selection

    def num_keep(self, num_tokens: int) -> int:
        """Tokens kept out of ``num_tokens`` reducible ones (Hourglass keeps its cluster grid,
        which is this count when the grid is square; see :func:`mmtt.functional.cluster_grid`)."""
        num_tokens = int(num_tokens)  # a 0-dim tensor under jit tracing (FLOP counting)
        floor = self.spec.keep_floor(num_tokens)
        return min(num_tokens, max(floor, round(self.keep_ratio * num_tokens)))

    def for_layer(self, index: int, depth: int) -> 'TokenTransform':
        """This transform as block ``index`` (0-based) of a ``depth``-block model uses it: a
        copy with the method's per-block schedule (PiToMe's margin and protection) filled in
        for the options left None, or ``self`` for a method without one. Hosts call it once,
        when they are built."""
        schedule = self.spec.layer_options
        if schedule is None:
            return self
        settings = dict(self._settings())
        for key, value in schedule(index, depth).items():
            if settings[key] is None:
                settings[key] = value
        return TokenTransform(**settings)

    def reduced_grid(self, grid_size: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
        """The grid the reduced tokens form when the input tokens form ``grid_size`` (None: no
        grid): the centre grid for a clustering method, None for the others."""
        make = self.spec.output_grid
        return None if grid_size is None or make is None else tuple(make(self.options, grid_size))

    def _settings(self) -> dict:
        return dict(keep_ratio=self.keep_ratio, method=self.method, kappa=self.kappa,
                    tau=self.tau, selection=self.selection, similarity=self.similarity,
                    orphans=self.orphans, top_k=self.top_k, score_stride=self.score_stride,
                    margin=self.margin, protect=self.protect, cluster_iters=self.cluster_iters,
                    cluster_window=self.cluster_window,
                    cluster_temperature=self.cluster_temperature, anchor=self.anchor,
                    distinct_stride=self.distinct_stride)

    def forward(self, x: Tensor, sizes: Optional[Tensor] = None, *, num_prefix: int = 0,
                scores: Optional[Tensor] = None, metric: Optional[Tensor] = None,
                validate_sizes: bool = True,
                grid_size: Optional[Tuple[int, int]] = None) -> Reduction:
        """Reduce ``x``.

        Args:
            x: ``[B, N, C]``, the first ``num_prefix`` of which are prefix tokens.
            sizes: ``[B, N]`` sizes from earlier reductions, or None (all 1).
            num_prefix: number of leading tokens never reduced.
            scores: ``[B, N]`` attention scores of the kind :attr:`score_kind` names.
            metric: ``[B, N, C']`` features compared for similarity; defaults to ``x``.
            validate_sizes: check that ``sizes`` are finite and > 0. That reads their values (a
                sync on a GPU), so hosts passing the sizes of their own earlier reduction, valid
                by construction, turn it off.
            grid_size: ``(h, w)``, the non-prefix tokens' patch grid (row-major) while they
                still form it, or None. Needed by the methods that cluster in space
                (``'hourglass'``); the others ignore it.
        """
        check_tensor('x', x, 3)
        check_floating('x', x)
        if torch.onnx.is_in_onnx_export():
            self._check_exportable()
        # The batch stays x.shape[0], not a Python int: a trace (ONNX export) records it as
        # dynamic. The token count is a Python int: it fixes the reduction's shapes.
        batch, n = x.shape[0], int(x.shape[1])
        if sizes is not None:
            check_tensor('sizes', sizes, 2, (batch, n))
            if validate_sizes:
                check_positive_sizes(sizes)
        if not is_int(num_prefix):
            raise ValueError(f'num_prefix={num_prefix!r} must be an int (leading tokens never reduced)')
        if not 0 <= num_prefix < n:
            raise ValueError(f'num_prefix={num_prefix} must be in [0, {n}) for {n} tokens')
        spec = self.spec
        num_keep = self.num_keep(n - num_prefix)
        if num_keep == n - num_prefix:
            return Reduction(x, sizes, None)
        if spec.needs_grid:
            if grid_size is None:
                raise ValueError(f'grid_size=None: method={self.method!r} clusters the token grid, '
                                 'so it needs grid_size=(h, w): the host gives none, or an earlier '
                                 "reduction left no grid (only the patch grid or an earlier "
                                 "hourglass' centre grid will do)")
            grid_size = check_grid_size(grid_size, n - num_prefix)
        kind = self.score_kind
        if kind is not None:
            if scores is None:
                raise ValueError(f"scores is required: method={self.method!r} with "
                                 f"selection={self.selection!r} needs '{kind}' attention scores")
            check_tensor('scores', scores, 2, (batch, n))
            if kind == 'cls' and num_prefix == 0:
                raise ValueError(f'method={self.method!r}, selection={self.selection!r} uses '
                                 'class-token attention, but the model has no prefix token')
            scores = scores[:, num_prefix:]
        metric = x if metric is None else metric
        check_tensor('metric', metric, 3, (batch, n, None))
        tokens, feats = x[:, num_prefix:], metric[:, num_prefix:]
        token_sizes = None if sizes is None else sizes[:, num_prefix:]
        if spec.scores == 'selection':
            if self.selection == 'uniform':
                scores = uniform_scores(batch, n - num_prefix, num_keep, device=x.device)
            elif self.selection == 'mixed' and not spec.mixes_scores:
                scores = mixed_scores(scores, feats, self.distinct_stride)
        matrix = spec.build(self.options, BuildInput(feats, scores, num_keep, token_sizes, num_prefix,
                                             grid_size))
        reduced = matrix.apply(tokens)
        prefix_sizes = matrix.sizes.new_ones(batch, num_prefix)
        return Reduction(torch.cat([x[:, :num_prefix], reduced], dim=1),
                         torch.cat([prefix_sizes, matrix.sizes], dim=1), matrix)

    def _check_exportable(self) -> None:
        # torch's TopK and ONNX Runtime's break ties differently; these settings create ties
        # (a column gated out entirely has M equal shares; 'mixed' sums two integer ranks), so
        # the exported model would compute other values than this one.
        tied = ('top_k with orphans=\'spread\'' if self.top_k is not None and self.orphans == 'spread'
                else "selection='mixed'" if self.selection == 'mixed' else None)
        if tied is not None:
            raise ValueError(f'ONNX export refused: {tied} ranks tied values, which ONNX Runtime orders '
                             "unlike torch; export with orphans='nearest' and selection='informative'")

    def extra_repr(self) -> str:
        text = (f'keep_ratio={self.keep_ratio}, method={self.method!r}, kappa={self.kappa}, '
                f'tau={self.tau}, selection={self.selection!r}, similarity={self.similarity!r}, '
                f'orphans={self.orphans!r}, top_k={self.top_k}, score_stride={self.score_stride}')
        if self.selection == 'mixed':
            text += f', distinct_stride={self.distinct_stride}'
        # The options only some methods read, where this method reads them (top_k is above).
        for key in self.spec.options:
            if key != 'top_k':
                text += f', {key}={getattr(self, key)!r}'
        return text
