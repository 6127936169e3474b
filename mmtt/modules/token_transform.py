"""The registry-facing token-reduction module: one config dict picks the method."""
from typing import NamedTuple, Optional

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..functional import (ORPHAN_RULES, SIMILARITIES, TokenMatrix, evit_matrix, mixed_scores,
                          prune_matrix, tome_matrix, transform_token_matrix, uniform_scores)
from ..functional._checks import (check_choice, check_floating, check_kappa, check_keep_ratio,
                                  check_positive_sizes, check_score_stride, check_tau,
                                  check_tensor, check_top_k, is_int)

METHODS = ('transform', 'prune', 'evit', 'tome')
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
    distillation, register) are passed through and never reduced.

    Args:
        keep_ratio: fraction of the non-prefix tokens kept, in (0, 1]; 1 is an exact no-op.
        method: ``'transform'`` (Token Transforming, many-to-many), ``'prune'``, ``'evit'``
            (keep the most class-attended, fuse the rest into one token) or ``'tome'``
            (bipartite soft matching; needs ``keep_ratio >= 0.5``).
        kappa: similarity gate of eq. 3. The paper's ablation (Table 6) peaks at 0.5-0.6.
        tau: softmax temperature of eq. 5. Table 6: best at 150, flat from 100 to 250.
        selection: how informative tokens (transform) or kept tokens (prune) are chosen:
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
        score_stride: 1 (the paper's eq. 2): the informative scores sum every query row of
            the attention map. s > 1, an option beyond the paper: the host keeps its fused
            attention kernel and the column sums come from every s-th query row
            (:func:`mmtt.functional.sampled_attention_scores`), 1 / s of the work.
    """

    def __init__(self, keep_ratio: float = 0.7, method: str = 'transform', kappa: float = 0.55,
                 tau: float = 150.0, selection: str = 'informative', similarity: str = 'cosine',
                 orphans: str = 'spread', top_k: Optional[int] = None,
                 score_stride: int = 1) -> None:
        super().__init__()
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
            if method != 'transform':
                raise ValueError(f"top_k={top_k} applies only to method='transform', got "
                                 f'method={method!r}')
        if method == 'tome' and keep_ratio < 0.5:
            raise ValueError(f"keep_ratio={keep_ratio} is below 0.5, which method='tome' cannot "
                             'reach in one step (bipartite matching merges at most half)')
        self.keep_ratio = float(keep_ratio)
        self.method = method
        self.kappa = float(kappa)
        self.tau = float(tau)
        self.selection = selection
        self.similarity = similarity
        self.orphans = orphans
        self.top_k = top_k
        self.score_stride = score_stride

    @property
    def score_kind(self) -> Optional[str]:
        """Which attention scores :meth:`forward` needs from the host: ``'informative'``,
        ``'cls'`` or None. Hosts compute only what is asked for."""
        if self.method == 'evit':
            return 'cls'
        if self.method == 'tome' or self.selection == 'uniform':
            return None
        return 'informative' if self.selection == 'mixed' else self.selection

    def num_keep(self, num_tokens: int) -> int:
        """Tokens kept out of ``num_tokens`` reducible ones."""
        num_tokens = int(num_tokens)  # a 0-dim tensor under jit tracing (FLOP counting)
        # ToMe merges at most half, and a single token has no partner to merge with.
        floor = 2 if self.method == 'evit' else max(1, num_tokens // 2) if self.method == 'tome' else 1
        return min(num_tokens, max(floor, round(self.keep_ratio * num_tokens)))

    def forward(self, x: Tensor, sizes: Optional[Tensor] = None, *, num_prefix: int = 0,
                scores: Optional[Tensor] = None, metric: Optional[Tensor] = None,
                validate_sizes: bool = True) -> Reduction:
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
        """
        check_tensor('x', x, 3)
        check_floating('x', x)
        batch, n = int(x.shape[0]), int(x.shape[1])
        if sizes is not None:
            check_tensor('sizes', sizes, 2, (batch, n))
            if validate_sizes:
                check_positive_sizes(sizes)
        if not is_int(num_prefix):
            raise ValueError(f'num_prefix={num_prefix!r} must be an int (leading tokens never reduced)')
        if not 0 <= num_prefix < n:
            raise ValueError(f'num_prefix={num_prefix} must be in [0, {n}) for {n} tokens')
        num_keep = self.num_keep(n - num_prefix)
        if num_keep == n - num_prefix:
            return Reduction(x, sizes, None)
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
        if self.selection == 'uniform' and self.method in ('transform', 'prune'):
            scores = uniform_scores(batch, n - num_prefix, num_keep, device=x.device)
        elif self.selection == 'mixed' and self.method in ('transform', 'prune'):
            scores = mixed_scores(scores, feats)

        if self.method == 'transform':
            matrix = transform_token_matrix(feats, scores, num_keep, self.kappa, self.tau,
                                            token_sizes, similarity_kind=self.similarity,
                                            orphans=self.orphans, top_k=self.top_k)
        elif self.method == 'prune':
            matrix = prune_matrix(scores, num_keep, token_sizes)
        elif self.method == 'evit':
            matrix = evit_matrix(scores, num_keep, token_sizes)
        else:
            matrix = tome_matrix(feats, num_keep, token_sizes)

        reduced = matrix.apply(tokens)
        prefix_sizes = matrix.sizes.new_ones(batch, num_prefix)
        return Reduction(torch.cat([x[:, :num_prefix], reduced], dim=1),
                         torch.cat([prefix_sizes, matrix.sizes], dim=1), matrix)

    def extra_repr(self) -> str:
        return (f'keep_ratio={self.keep_ratio}, method={self.method!r}, kappa={self.kappa}, '
                f'tau={self.tau}, selection={self.selection!r}, similarity={self.similarity!r}, '
                f'orphans={self.orphans!r}, top_k={self.top_k}, score_stride={self.score_stride}')
