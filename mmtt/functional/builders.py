"""Builders of reduction matrices: Token Transforming (eq. 3-6, 8), pruning, EViT and ToMe.

All take tokens without prefix (class/distillation/register) tokens; the caller keeps those.
``sizes: [B, N]`` gives the number of original tokens each input token already stands for
(after an earlier reduction); ``None`` means one each.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (check_choice, check_floating, check_kappa, check_num_keep, check_tau,
                      check_tensor, check_top_k)
from .token_matrix import GATHER, MASS, SCATTER, TokenMatrix

SIMILARITIES = ('cosine', 'euclidean')
ORPHAN_RULES = ('spread', 'nearest')


def _work_dtype(x: Tensor) -> torch.dtype:
    # Coefficients are built in float32 at least: exp(GSim * tau) with tau up to 250 must not
    # be formed in half precision, and the softmax below never forms it unshifted anyway.
    return torch.promote_types(x.dtype, torch.float32)


def _check_sizes(sizes: Optional[Tensor], x: Tensor) -> None:
    if sizes is not None:
        check_tensor('sizes', sizes, 2, x.shape[:2])


def _float_matmul(a: Tensor, b: Tensor) -> Tensor:
    # Similarities feed exp(tau * GSim) with tau ~ 150: a bf16/fp16 product (what autocast
    # would pick) rounds a cosine of 0.9 by ~2e-3, a factor e^0.3 in eq. 5. So they are
    # formed in the inputs' (float32 or wider) dtype even under autocast.
    with torch.autocast(a.device.type, enabled=False):
        return a @ b


def _token_similarity(x: Tensor, queries: Tensor, kind: str, scale: float = 1.0) -> Tensor:
    """``scale`` times :func:`similarity`, token-major: ``[B, N, M]``, row j = token j against
    every query. The scale is applied to the ``[B, N, C]`` operand, not the ``[B, N, M]`` result."""
    check_choice('similarity', kind, SIMILARITIES)
    work = _work_dtype(x)
    queries, x = queries.to(work), x.to(work)
    if kind == 'cosine':
        return _float_matmul(F.normalize(x, dim=-1) * scale, F.normalize(queries, dim=-1).transpose(1, 2))
    sq_x = x.pow(2).sum(-1)[:, :, None]
    sq_q = queries.pow(2).sum(-1)[:, None, :]
    dots = _float_matmul(x * (2 * scale), queries.transpose(1, 2))
    return dots.div_((sq_x + sq_q).clamp_min(torch.finfo(work).tiny))


def similarity(queries: Tensor, x: Tensor, kind: str = 'cosine') -> Tensor:
    """Similarity of each query to each token: ``[B, M, N]`` in ``[-1, 1]``.

    Args:
        queries: ``[B, M, C]``.
        x: ``[B, N, C]``.
        kind: ``'cosine'`` (eq. 4) or ``'euclidean'``: ``1 - |a - b|^2 / (|a|^2 + |b|^2)``,
            one minus a scale-free squared L2 distance (Table 8's alternative), which equals
            the cosine for tokens of equal norm, so the same kappa applies.
    """
    return _token_similarity(x, queries, kind).transpose(1, 2)


def transform_matrix(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                     sizes: Optional[Tensor] = None, *, similarity_kind: str = 'cosine',
                     orphans: str = 'spread') -> Tuple[Tensor, Tensor]:
    """Token Transforming's many-to-many matrix, eq. 3-6 and 8.

    1. The ``num_keep`` tokens of highest ``scores`` are the informative tokens (queries).
    2. ``GSim = sim`` where ``sim >= kappa`` else 0 (eq. 3-4).
    3. ``m = softmax(GSim * tau)`` over the M informative tokens of each column (eq. 5).
    4. ``s_i = sum_j m_ij`` (eq. 8) and ``W_ij = m_ij / s_i`` (eq. 6).

    With ``sizes``, token j stands for ``sizes_j`` originals, and W and s are what the paper's
    formulas give for the expanded set where token j is repeated ``sizes_j`` times (the
    selection aside): ``s_i = sum_j m_ij sizes_j`` and ``W_ij = m_ij sizes_j / s_i``. So Y stays
    a weighted mean over original tokens and ``s`` keeps counting originals across several
    reductions. With ``sizes=None`` this is exactly the paper's eq. 6 and 8.

    This materialises W for inspection; :func:`transform_token_matrix` builds the same
    reduction without forming W (what the hosts use).

    Args:
        x: tokens ``[B, N, C]`` (the hidden states compared by eq. 4).
        scores: ``[B, N]``; higher is more informative (e.g. :func:`informative_scores`).
        num_keep: M, in ``[1, N]``.
        kappa: similarity gate in ``[-1, 1]``.
        tau: softmax temperature, > 0.
        sizes: ``[B, N]`` or None.
        similarity_kind: ``'cosine'`` (paper) or ``'euclidean'``.
        orphans: what a column whose similarities are all below kappa does. ``'spread'``
            (the paper's formulas): its GSim are all 0, so its softmax is uniform and it is
            spread over all M rows. ``'nearest'``: it goes wholly to its most similar query.

    Returns:
        ``(W [B, M, N] in x's dtype, s [B, M] in float32 or wider)``; rows are in
        decreasing score order.
    """
    queries = _checked_queries(x, scores, num_keep, kappa, tau, sizes, orphans)
    return _matrix_from_queries(x, queries, kappa, tau, sizes, similarity_kind, orphans)


def _checked_queries(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                     sizes: Optional[Tensor], orphans: str) -> Tensor:
    """Check the arguments of a transform and return its informative tokens ``[B, M, C]``."""
    check_tensor('x', x, 3)
    check_floating('x', x)
    check_tensor('scores', scores, 2, x.shape[:2])
    _check_sizes(sizes, x)
    check_num_keep(num_keep, x.shape[1])
    check_kappa(kappa)
    check_tau(tau)
    check_choice('orphans', orphans, ORPHAN_RULES)
    keep = scores.topk(num_keep, dim=1).indices
    return x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))


def _gated_logits(x: Tensor, queries: Tensor, kappa: float, tau: float,
                  similarity_kind: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Eq. 3-4 times tau, token-major: ``(tau * GSim [B, N, M], nearest [B, N], orphan [B, N])``.

    ``nearest`` is each token's most similar query; ``orphan`` marks tokens whose every
    similarity is below kappa.
    """
    logits = _token_similarity(x, queries, similarity_kind, scale=tau)
    best, nearest = logits.max(dim=-1)
    # The gate as one in-place pass over the largest tensor of the build. threshold keeps
    # values > kappa tau, so a similarity exactly equal to kappa is gated out (the paper keeps
    # it); ties at the boundary have probability zero for real tokens.
    gated = F.threshold(logits, kappa * tau, 0.0, inplace=not logits.requires_grad)
    return gated, nearest, best <= kappa * tau


def _shares(x: Tensor, queries: Tensor, kappa: float, tau: float, similarity_kind: str,
            orphans: str) -> Tuple[Tensor, Tensor]:
    """Eq. 5, token-major: ``(m^T [B, N, M], nearest [B, N])``; row j of ``m^T`` is token
    j's softmax over the M queries (the contiguous dimension, so softmax is one fast pass)."""
    logits, nearest, orphan = _gated_logits(x, queries, kappa, tau, similarity_kind)
    # softmax subtracts the row max first: exp never sees more than 0.
    m = logits.softmax(dim=-1)
    if orphans == 'nearest':
        row = nearest[..., None]
        kept = m.gather(-1, row)
        to_row = torch.where(orphan[..., None], torch.ones_like(kept), kept)
        if m.requires_grad:   # softmax's backward needs its output unmodified
            m = m.masked_fill(orphan[..., None], 0.0).scatter(-1, row, to_row)
        else:
            m.masked_fill_(orphan[..., None], 0.0).scatter_(-1, row, to_row)
    return m, nearest


def _mass_matrix(x: Tensor, queries: Tensor, kappa: float, tau: float, sizes: Optional[Tensor],
                 similarity_kind: str, orphans: str) -> TokenMatrix:
    """Eq. 5, 6 and 8 as a ``mass`` :class:`TokenMatrix` (W is never formed)."""
    mass, nearest = _shares(x, queries, kappa, tau, similarity_kind, orphans)
    inplace = not mass.requires_grad   # in place saves a pass each, but not under autograd
    if sizes is not None:
        column_sizes = sizes[:, :, None].to(mass.dtype)
        mass = mass.mul_(column_sizes) if inplace else mass * column_sizes
    s = mass.sum(dim=1)
    # exp(tau * (GSim - max)) underflows to subnormals for far tokens: they weigh nothing, but
    # make the product with X 10-30x slower on x86 CPUs, so they are flushed to 0.
    mass = F.threshold(mass, torch.finfo(mass.dtype).tiny, 0.0, inplace=inplace)
    return TokenMatrix(MASS, x.shape[1], queries.shape[1], s, index=nearest, weight=mass)


def _matrix_from_queries(x: Tensor, queries: Tensor, kappa: float, tau: float,
                         sizes: Optional[Tensor], similarity_kind: str,
                         orphans: str) -> Tuple[Tensor, Tensor]:
    """``(W [B, M, N] in x's dtype, s [B, M])`` for the given queries ``[B, M, C]``."""
    matrix = _mass_matrix(x, queries, kappa, tau, sizes, similarity_kind, orphans)
    w = matrix.dense()
    return w.masked_fill(w < torch.finfo(w.dtype).tiny, 0.0).to(x.dtype), matrix.sizes


def _top_k_matrix(x: Tensor, queries: Tensor, kappa: float, tau: float, sizes: Optional[Tensor],
                  similarity_kind: str, orphans: str, top_k: int) -> TokenMatrix:
    # Each column keeps its top_k shares of eq. 5, rescaled to sum to 1; then eq. 6 and 8 as
    # usual, so rows of W still sum to 1 and s still counts original tokens. The rescaled
    # top-k shares of a softmax are the softmax of the top-k logits, so the full M-way
    # softmax is never computed.
    logits, nearest, orphan = _gated_logits(x, queries, kappa, tau, similarity_kind)
    batch, num_in, num_out = logits.shape
    top_logits, rows = logits.topk(min(top_k, num_out), dim=-1)    # [B, N, k], largest first
    share = top_logits.softmax(dim=-1)
    if orphans == 'nearest':   # a gated-out column goes wholly to its most similar query
        rows[..., 0] = torch.where(orphan, nearest, rows[..., 0])
        one_hot = torch.zeros_like(share)
        one_hot[..., 0] = 1.0
        share = torch.where(orphan[..., None], one_hot, share)
    mass = share if sizes is None else share * sizes[:, :, None].to(share.dtype)
    flat_rows = rows.flatten(1)
    s = mass.new_zeros(batch, num_out).scatter_add_(1, flat_rows, mass.flatten(1))
    # A row that no column reaches (possible only with exact duplicate queries) has s = 0 and
    # an all-zero row of W: it stands for nothing, and log s masks it in later attention.
    weight = mass / s.gather(1, flat_rows).view_as(mass).clamp_min(torch.finfo(s.dtype).tiny)
    # Stored as [B, k, N]: slot 0 of every column is its largest share.
    return TokenMatrix(SCATTER, num_in, num_out, s, index=rows.transpose(1, 2),
                       weight=weight.transpose(1, 2))


def transform_token_matrix(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                           sizes: Optional[Tensor] = None, *, top_k: Optional[int] = None,
                           similarity_kind: str = 'cosine', orphans: str = 'spread') -> TokenMatrix:
    """:func:`transform_matrix` as a :class:`TokenMatrix`, without forming W.

    Args:
        top_k: None (default): the paper's W, stored as the ``mass`` form (``m_ij sizes_j``,
            token-major) and applied as one matmul. An int k, an option beyond the paper:
            each column keeps only its k largest assignment shares ``m_ij`` (eq. 5), rescaled
            to sum to 1, before eq. 6 and 8. W then has at most k non-zeros per column and is
            applied by scatter-add, ``k N C`` instead of ``M N C`` multiply-adds. With
            tau = 150 a few rows already hold nearly all of each column (the README gives the
            measured mass and fidelity).
        x, scores, num_keep, kappa, tau, sizes, similarity_kind, orphans: as
            :func:`transform_matrix`.
    """
    if top_k is not None:
        check_top_k(top_k)
    queries = _checked_queries(x, scores, num_keep, kappa, tau, sizes, orphans)
    if top_k is None:
        return _mass_matrix(x, queries, kappa, tau, sizes, similarity_kind, orphans)
    return _top_k_matrix(x, queries, kappa, tau, sizes, similarity_kind, orphans, top_k)


def prune_matrix(scores: Tensor, num_keep: int, sizes: Optional[Tensor] = None) -> TokenMatrix:
    """Pruning: keep the ``num_keep`` highest-scoring tokens (one-hot rows of W).

    A kept token keeps its own size; what the dropped tokens stood for is lost.
    """
    check_tensor('scores', scores, 2)
    _check_sizes(sizes, scores[..., None])
    check_num_keep(num_keep, scores.shape[1])
    keep = scores.topk(num_keep, dim=1).indices
    kept_sizes = (torch.ones_like(scores, dtype=_work_dtype(scores)) if sizes is None
                  else sizes).gather(1, keep)
    return TokenMatrix(GATHER, scores.shape[1], num_keep, kept_sizes, index=keep)


def _block_matrix(dest: Tensor, num_out: int, mass: Tensor) -> TokenMatrix:
    # Column j goes to row dest[j] with weight mass_j / (total mass of its row): each row
    # is a weighted mean of its columns. Sizes are the row totals of the original sizes.
    totals = mass.new_zeros(mass.shape[0], num_out).scatter_add_(1, dest, mass)
    weight = mass / totals.gather(1, dest)
    return TokenMatrix(SCATTER, dest.shape[1], num_out, totals, index=dest, weight=weight)


def evit_matrix(cls_scores: Tensor, num_keep: int, sizes: Optional[Tensor] = None) -> TokenMatrix:
    """EViT-style fusion: keep the ``num_keep - 1`` tokens most attended by the class token and
    fuse all the others into one token, weighted by their class attention (and sizes).

    Row order: kept tokens by decreasing score, then the fused token.
    """
    check_tensor('cls_scores', cls_scores, 2)
    _check_sizes(sizes, cls_scores[..., None])
    n = cls_scores.shape[1]
    check_num_keep(num_keep, n, minimum=2)
    work = _work_dtype(cls_scores)
    order = cls_scores.argsort(dim=1, descending=True)
    rank_to_row = torch.arange(n, device=cls_scores.device).clamp_max(num_keep - 1)
    dest = torch.empty_like(order).scatter_(1, order, rank_to_row.expand_as(order))
    token_sizes = torch.ones_like(cls_scores, dtype=work) if sizes is None else sizes.to(work)
    fused = dest == num_keep - 1
    # Kept tokens are alone in their row (any positive mass gives weight 1); fused ones
    # are weighted by attention times size.
    mass = torch.where(fused, cls_scores.to(work).clamp_min(torch.finfo(work).tiny) * token_sizes,
                       torch.ones_like(token_sizes))
    block = _block_matrix(dest, num_keep, mass)
    block.sizes = token_sizes.new_zeros(block.sizes.shape).scatter_add_(1, dest, token_sizes)
    return block


def tome_matrix(metric: Tensor, num_keep: int, sizes: Optional[Tensor] = None) -> TokenMatrix:
    """ToMe bipartite soft matching: tokens alternate between sets A and B; the ``N - num_keep``
    A tokens with the most similar B partner (cosine of ``metric``) are averaged into it,
    weighted by size.

    Row order: the unmerged A tokens, then all B tokens.
    """
    check_tensor('metric', metric, 3)
    _check_sizes(sizes, metric)
    batch, n, _ = metric.shape
    num_a, num_b = (n + 1) // 2, n // 2
    r = n - num_keep
    check_num_keep(num_keep, n, minimum=max(1, n - num_a))
    work = _work_dtype(metric)
    if num_b == 0:   # a single token: nothing to merge it with, W is the identity
        dest = torch.zeros(batch, n, dtype=torch.long, device=metric.device)
        mass = torch.ones(batch, n, dtype=work, device=metric.device) if sizes is None else sizes.to(work)
        return _block_matrix(dest, num_keep, mass)
    unit = F.normalize(metric.to(work), dim=-1)
    sim = unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)          # [B, num_a, num_b]
    best, partner = sim.max(dim=-1)
    rank = torch.empty_like(partner).scatter_(
        1, best.argsort(dim=-1, descending=True), torch.arange(num_a, device=metric.device).expand(batch, -1))
    merged = rank < r
    # Unmerged A tokens keep their original order in rows 0 .. num_a - r - 1, as in ToMe;
    # a merged one goes to its partner's row among the B rows that follow.
    unmerged_row = (~merged).cumsum(dim=1) - 1
    row_of_a = torch.where(merged, num_a - r + partner, unmerged_row)
    row_of_b = (num_a - r + torch.arange(num_b, device=metric.device)).expand(batch, -1)
    dest = torch.empty(batch, n, dtype=torch.long, device=metric.device)
    dest[:, 0::2], dest[:, 1::2] = row_of_a, row_of_b
    mass = torch.ones(batch, n, dtype=work, device=metric.device) if sizes is None else sizes.to(work)
    return _block_matrix(dest, num_keep, mass)
