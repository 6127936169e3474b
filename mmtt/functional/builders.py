"""Builders of reduction matrices: Token Transforming (eq. 3-6, 8), pruning, EViT and ToMe.

All take tokens without prefix (class/distillation/register) tokens; the caller keeps those.
``sizes: [B, N]`` gives the number of original tokens each input token already stands for
(after an earlier reduction); ``None`` means one each.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    check_choice,
    check_distinct_stride,
    check_floating,
    check_kappa,
    check_num_keep,
    check_tau,
    check_tensor,
    check_top_k,
    is_int,
)
from ._rows import gather_rows
from .scores import rank_sum as _rank_sum
from .scores import unit_distinctness, unit_tokens
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


def _threshold(x: Tensor, threshold: float, inplace: bool) -> Tensor:
    """``F.threshold(x, threshold, 0)``: ``x`` where ``x > threshold``, else 0.

    ONNX's TorchScript exporter has no symbolic for a non-zero threshold, so a trace records
    the same values as a ``where`` (eager keeps the one in-place pass).
    """
    if torch.jit.is_tracing():
        return torch.where(x <= threshold, torch.zeros_like(x), x)
    return F.threshold(x, threshold, 0.0, inplace=inplace)


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
        return _float_matmul(unit_tokens(x) * scale, unit_tokens(queries).transpose(1, 2))
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
    return matrix_from_queries(x, queries, kappa, tau, sizes, similarity_kind, orphans)


def _checked_queries(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                     sizes: Optional[Tensor], orphans: str) -> Tensor:
    """Check the arguments of a transform and return its informative tokens ``[B, M, C]``."""
    return gather_rows(x, _checked_keep(x, scores, num_keep, kappa, tau, sizes, orphans))


def _checked_keep(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                  sizes: Optional[Tensor], orphans: str) -> Tensor:
    """Check the arguments of a transform and return its informative tokens' indices ``[B, M]``
    (decreasing score: row i of W is token ``keep[:, i]``'s)."""
    _check_transform_args(x, scores, num_keep, kappa, tau, sizes, orphans)
    return scores.topk(num_keep, dim=1).indices


def _other_tokens(keep: Tensor, num_tokens: int) -> Tensor:
    """``[B, N - M]``: the indices not in ``keep`` (``[B, M]``), in increasing order."""
    other = torch.ones(keep.shape[0], num_tokens, dtype=torch.int8, device=keep.device)
    other.scatter_(1, keep, 0)
    # A stable sort puts the 1s (tokens not kept) first, each group in token order.
    order = other.sort(dim=1, descending=True, stable=True).indices
    return order[:, :num_tokens - keep.shape[1]]


def _check_transform_args(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                          sizes: Optional[Tensor], orphans: str) -> None:
    check_tensor('x', x, 3)
    check_floating('x', x)
    check_tensor('scores', scores, 2, x.shape[:2])
    _check_sizes(sizes, x)
    check_num_keep(num_keep, x.shape[1])
    check_kappa(kappa)
    check_tau(tau)
    check_choice('orphans', orphans, ORPHAN_RULES)


def _gated_logits(logits: Tensor, kappa: float, tau: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Eq. 3-4 times tau, token-major: ``(tau * GSim [B, N, M], nearest [B, N], orphan [B, N])``
    from ``logits = tau * sim`` (``[B, N, M]``, modified in place outside autograd).

    ``nearest`` is each token's most similar query; ``orphan`` marks tokens whose every
    similarity is below kappa.
    """
    best, nearest = logits.max(dim=-1)
    # The gate as one in-place pass over the largest tensor of the build. threshold keeps
    # values > kappa tau, so a similarity exactly equal to kappa is gated out (the paper keeps
    # it); ties at the boundary have probability zero for real tokens.
    gated = _threshold(logits, kappa * tau, inplace=not logits.requires_grad)
    return gated, nearest, best <= kappa * tau


def _shares(logits: Tensor, kappa: float, tau: float, orphans: str) -> Tuple[Tensor, Tensor]:
    """Eq. 5, token-major: ``(m^T [B, N, M], nearest [B, N])`` from ``logits = tau * sim``;
    row j of ``m^T`` is token j's softmax over the M queries (the contiguous dimension, so
    softmax is one fast pass)."""
    logits, nearest, orphan = _gated_logits(logits, kappa, tau)
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


def _mass_matrix(logits: Tensor, kappa: float, tau: float, sizes: Optional[Tensor],
                 orphans: str) -> TokenMatrix:
    """Eq. 5, 6 and 8 as a ``mass`` :class:`TokenMatrix` (W is never formed), from
    ``logits = tau * sim`` (``[B, N, M]``)."""
    return _mass_from_shares(*_shares(logits, kappa, tau, orphans), sizes)


def _mass_from_shares(mass: Tensor, nearest: Tensor, sizes: Optional[Tensor]) -> TokenMatrix:
    """Eq. 6 and 8 from the shares ``m^T`` (``[B, N, M]``, token-major, rows summing to 1) and
    each token's largest-share row ``nearest`` (``[B, N]``)."""
    inplace = not mass.requires_grad   # in place saves a pass each, but not under autograd
    if sizes is not None:
        column_sizes = sizes[:, :, None].to(mass.dtype)
        mass = mass.mul_(column_sizes) if inplace else mass * column_sizes
    s = mass.sum(dim=1)
    # exp(tau * (GSim - max)) underflows to subnormals for far tokens: they weigh nothing, but
    # make the product with X 10-30x slower on x86 CPUs, so they are flushed to 0.
    mass = _threshold(mass, torch.finfo(mass.dtype).tiny, inplace=inplace)
    return TokenMatrix(MASS, mass.shape[1], mass.shape[2], s, index=nearest, weight=mass)


def matrix_from_queries(x: Tensor, queries: Tensor, kappa: float, tau: float,
                        sizes: Optional[Tensor], similarity_kind: str,
                        orphans: str) -> Tuple[Tensor, Tensor]:
    """Eq. 3-6 and 8 for queries chosen by the caller: ``(W [B, M, N] in x's dtype, s [B, M])``.

    :func:`transform_matrix` picks the queries by score; the Swin window transform
    (:func:`mmtt.functional.windows.grid_transform`) picks one per cell of a grid.

    Args:
        x: tokens ``[B, N, C]``; queries: ``[B, M, C]``; the rest as :func:`transform_matrix`.
    """
    logits = _token_similarity(x, queries, similarity_kind, scale=tau)
    matrix = _mass_matrix(logits, kappa, tau, sizes, orphans)
    w = matrix.dense()
    return w.masked_fill(w < torch.finfo(w.dtype).tiny, 0.0).to(x.dtype), matrix.sizes


def _top_k_shares(logits: Tensor, kappa: float, tau: float, orphans: str,
                  top_k: int) -> Tuple[Tensor, Tensor]:
    """``(rows [B, N, k], shares [B, N, k])``: each token's k largest shares of eq. 5, largest
    first, rescaled to sum to 1, from ``logits = tau * sim`` (``[B, N, M]``)."""
    # The rescaled top-k shares of a softmax are the softmax of the top-k logits, so the full
    # M-way softmax is never computed.
    if orphans == 'spread':   # nothing reads each token's nearest query: no pass to find it
        gated = _threshold(logits, kappa * tau, inplace=not logits.requires_grad)
        top_logits, rows = gated.topk(min(top_k, logits.shape[-1]), dim=-1)
        return rows, top_logits.softmax(dim=-1)
    logits, nearest, orphan = _gated_logits(logits, kappa, tau)
    top_logits, rows = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    # orphans='nearest': a gated-out column goes wholly to its most similar query.
    rows[..., 0] = torch.where(orphan, nearest, rows[..., 0])
    one_hot = torch.zeros_like(top_logits)
    one_hot[..., 0] = 1.0
    return rows, torch.where(orphan[..., None], one_hot, top_logits.softmax(dim=-1))


def _scatter_from_shares(rows: Tensor, share: Tensor, sizes: Optional[Tensor],
                         num_out: int) -> TokenMatrix:
    """Eq. 6 and 8 for columns with a few non-zero shares: token j sends ``share[b, j, t]`` to
    row ``rows[b, j, t]`` (``[B, N, k]``, slot 0 the largest); rows of W sum to 1 and s counts
    original tokens."""
    mass = share if sizes is None else share * sizes[:, :, None].to(share.dtype)
    flat_rows = rows.flatten(1)
    s = mass.new_zeros(mass.shape[0], num_out).scatter_add_(1, flat_rows, mass.flatten(1))
    # A row that no column reaches (possible only with exact duplicate queries) has s = 0 and
    # an all-zero row of W: it stands for nothing, and log s masks it in later attention.
    weight = mass / s.gather(1, flat_rows).view_as(mass).clamp_min(torch.finfo(s.dtype).tiny)
    # Stored as [B, k, N]: slot 0 of every column is its largest share.
    return TokenMatrix(SCATTER, rows.shape[1], num_out, s, index=rows.transpose(1, 2),
                       weight=weight.transpose(1, 2))


def _top_k_matrix(logits: Tensor, kappa: float, tau: float, sizes: Optional[Tensor],
                  orphans: str, top_k: int) -> TokenMatrix:
    # Each column keeps its top_k shares of eq. 5, rescaled to sum to 1; then eq. 6 and 8 as
    # usual, so rows of W still sum to 1 and s still counts original tokens.
    return _scatter_from_shares(*_top_k_shares(logits, kappa, tau, orphans, top_k), sizes,
                                logits.shape[-1])


def _anchored_matrix(logits: Tensor, keep: Tensor, other: Tensor, kappa: float, tau: float,
                     sizes: Optional[Tensor], orphans: str, top_k: Optional[int]) -> TokenMatrix:
    """Eq. 5, 6 and 8 with every informative token's column one-hot on its own row, from the
    logits of the other tokens only (``[B, N - M, M]``; ``keep: [B, M]``, ``other: [B, N - M]``)."""
    batch, num_out = keep.shape
    own_row = torch.arange(num_out, device=keep.device).expand(batch, -1)
    # Token order -> position in [other tokens; informative tokens], the order computed in
    # (the inverse of that permutation, by one scatter).
    order = torch.cat([other, keep], dim=1)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    back = torch.empty_like(order).scatter_(1, order, positions)
    if top_k is None:
        shares, nearest = _shares(logits, kappa, tau, orphans)
        own = F.one_hot(own_row, num_out).to(shares.dtype)
        mass = gather_rows(torch.cat([shares, own], dim=1), back)
        return _mass_from_shares(mass, torch.cat([nearest, own_row], dim=1).gather(1, back), sizes)
    rows, share = _top_k_shares(logits, kappa, tau, orphans, top_k)
    own_rows = own_row[..., None].expand(-1, -1, rows.shape[-1])
    own_share = share.new_zeros(batch, num_out, share.shape[-1])
    own_share[..., 0] = 1.0
    rows = gather_rows(torch.cat([rows, own_rows], dim=1), back)
    share = gather_rows(torch.cat([share, own_share], dim=1), back)
    return _scatter_from_shares(rows, share, sizes, num_out)


def transform_token_matrix(x: Tensor, scores: Tensor, num_keep: int, kappa: float, tau: float,
                           sizes: Optional[Tensor] = None, *, top_k: Optional[int] = None,
                           similarity_kind: str = 'cosine', orphans: str = 'spread',
                           mixed: bool = False, anchor: bool = False,
                           distinct_stride: int = 1) -> TokenMatrix:
    """:func:`transform_matrix` as a :class:`TokenMatrix`, without forming W.

    Args:
        top_k: None (default): the paper's W, stored as the ``mass`` form (``m_ij sizes_j``,
            token-major) and applied as one matmul. An int k, an option beyond the paper:
            each column keeps only its k largest assignment shares ``m_ij`` (eq. 5), rescaled
            to sum to 1, before eq. 6 and 8. W then has at most k non-zeros per column and is
            applied by scatter-add, ``k N C`` instead of ``M N C`` multiply-adds. With
            tau = 150 a few rows already hold nearly all of each column (the README gives the
            measured mass and fidelity).
        mixed: ``scores`` are eq. 2's and the informative tokens are chosen by
            :func:`mmtt.functional.mixed_scores` (rank of eq. 2 plus rank of distinctness).
            With cosine similarity the ``[B, N, N]`` similarity that distinctness needs also
            holds every column W needs, so it is formed once and W's ``[B, N, M]`` block is
            gathered from it (one ``N^2 C`` product instead of ``N^2 C + N M C``).
        anchor: False (the paper): every token's column is eq. 5's softmax over the M
            informative tokens. True, an option beyond the paper: an informative token sends
            its whole mass to its own row (its column of W is one-hot), so only the other
            N - M tokens are compared with the informative ones (eq. 4-5 over ``(N - M) M``
            pairs instead of ``N M``). With tau = 150 an informative token's own share is
            nearly 1 already (its cosine with itself is 1); the README gives the measured
            fidelity, unchanged to 0.002 IoU.
        distinct_stride: with ``mixed``, the stride of :func:`mmtt.functional.mixed_scores`'s
            distinctness. 1 (exact) forms the ``[B, N, N]`` similarity and gathers W's
            similarities from it; s > 1 compares each token with every s-th token for the
            ranking (``N^2 C / s``) and forms W's similarities to the chosen queries alone.
        x, scores, num_keep, kappa, tau, sizes, similarity_kind, orphans: as
            :func:`transform_matrix`.
    """
    if top_k is not None:
        check_top_k(top_k)
    if not isinstance(anchor, bool):
        raise ValueError(f'anchor={anchor!r} must be True or False')
    check_distinct_stride(distinct_stride)
    if mixed and similarity_kind == 'cosine' and distinct_stride == 1:
        cos, keep = _mixed_selection(x, scores, num_keep, kappa, tau, sizes, orphans)
        rows = _other_tokens(keep, x.shape[1]) if anchor else None
        if rows is not None:   # only the other tokens' rows of the N x N similarity
            cos = gather_rows(cos, rows)
        logits = cos.gather(2, keep[:, None, :].expand(-1, cos.shape[1], -1))
        logits = logits.mul_(tau) if not logits.requires_grad else logits * tau
    else:
        # Cosines compare unit tokens: normalised once, for the distinctness ranking and W alike.
        _check_transform_args(x, scores, num_keep, kappa, tau, sizes, orphans)
        unit = unit_tokens(x) if mixed or similarity_kind == 'cosine' else None
        if mixed:
            scores = _rank_sum(scores, unit_distinctness(unit, distinct_stride))
        keep = scores.topk(num_keep, dim=1).indices
        rows = _other_tokens(keep, x.shape[1]) if anchor else None
        if similarity_kind == 'cosine':
            columns = unit if rows is None else gather_rows(unit, rows)
            logits = _float_matmul(columns * tau, gather_rows(unit, keep).transpose(1, 2))
        else:
            logits = _token_similarity(x if rows is None else gather_rows(x, rows),
                                       gather_rows(x, keep), similarity_kind, scale=tau)
    if anchor:
        return _anchored_matrix(logits, keep, rows, kappa, tau, sizes, orphans, top_k)
    if top_k is None:
        return _mass_matrix(logits, kappa, tau, sizes, orphans)
    return _top_k_matrix(logits, kappa, tau, sizes, orphans, top_k)


def _mixed_selection(x: Tensor, informative: Tensor, num_keep: int, kappa: float, tau: float,
                     sizes: Optional[Tensor], orphans: str) -> Tuple[Tensor, Tensor]:
    """:func:`mixed_scores` selection from one ``[B, N, N]`` cosine similarity: ``(cos, keep
    [B, M])``; W's logits are ``tau`` times the kept columns of ``cos``."""
    _check_transform_args(x, informative, num_keep, kappa, tau, sizes, orphans)
    unit = unit_tokens(x)
    cos = _float_matmul(unit, unit.transpose(1, 2))
    if cos.requires_grad or torch.jit.is_tracing():   # (an exporter loses writes to a view)
        ids = torch.arange(cos.shape[-1], device=cos.device)
        distinct = -cos.masked_fill(ids[:, None] == ids, -2.0).amax(dim=-1)
    else:   # in place: a token is not its own neighbour; then its diagonal is put back
        diagonal = cos.diagonal(dim1=1, dim2=2)
        self_cos = diagonal.clone()
        diagonal.fill_(-2.0)
        distinct = -cos.amax(dim=-1)
        diagonal.copy_(self_cos)
    return cos, _rank_sum(informative, distinct).topk(num_keep, dim=1).indices


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


def tome_matrix(metric: Tensor, num_keep: int, sizes: Optional[Tensor] = None, *,
                num_prefix: int = 0) -> TokenMatrix:
    """ToMe's bipartite soft matching, as facebookresearch/ToMe's ``bipartite_soft_matching``
    and ``merge_wavg`` run it: tokens alternate between sets A and B; each A token finds its
    most similar B token (cosine of ``metric``), and the ``r = N - num_keep`` A tokens with
    the highest such similarity are averaged into it, weighted by size.

    Which tokens are in A follows ToMe's code, which alternates over the whole sequence,
    prefix tokens included, starting with A: a token is in A when its position in the full
    sequence, ``num_prefix + j``, is even. The prefix tokens take no part: ToMe gives a class
    token (position 0, in A) the score -inf, so it is never merged, and a distillation token
    (position 1, in B) the score -inf as a destination, so nothing is merged into it. This
    parity rule is the one generalisation to P prefix tokens that reduces to ToMe's code for
    P = 0 (A = even tokens), P = 1 (class token: A = odd tokens) and P = 2 (class and
    distillation tokens: A = even tokens again): alternating over the non-prefix tokens alone
    agrees for P = 0 and 2 but not for P = 1, the common case. So ``method='tome'`` gives
    ToMe's outputs on its models (``tests/test_tome_reference.py``); P > 2 (register tokens),
    which ToMe's code has no case for, follows the same rule.

    Row order is ToMe's output order: the unmerged A tokens, then all B tokens in their
    original order. With a prefix (P > 0) the unmerged A tokens are in their original order
    (ToMe sorts them to bring the class token first); without one (P = 0) ToMe does not sort,
    and they are in decreasing order of their best similarity.

    At most ``N // 2`` tokens are merged, ToMe's limit (``r = min(r, (t - protected) // 2)``).

    Args:
        metric: ``[B, N, C]`` features compared (ToMe: head-averaged keys), prefix tokens
            excluded.
        num_keep: tokens kept, in ``[N - N // 2, N]``; ``N`` returns the identity, as ToMe
            does for ``r = 0``.
        sizes: ``[B, N]`` or None.
        num_prefix: P, the prefix tokens that precede these N tokens in the sequence.

    Returns:
        A ``scatter`` :class:`TokenMatrix` with ``num_keep`` rows.
    """
    check_tensor('metric', metric, 3)
    _check_sizes(sizes, metric)
    if not is_int(num_prefix) or num_prefix < 0:
        raise ValueError(f'num_prefix={num_prefix!r} must be an int >= 0 (prefix tokens before '
                         'the metric\'s tokens)')
    n = metric.shape[1]
    check_num_keep(num_keep, n, minimum=n - n // 2)
    r = n - num_keep
    work = _work_dtype(metric)
    mass = torch.ones_like(metric[..., 0], dtype=work) if sizes is None else sizes.to(work)
    positions = torch.arange(n, device=metric.device)
    if r == 0:   # ToMe's do_nothing: W is the identity
        return _block_matrix(positions.expand_as(mass), n, mass)
    first_a = num_prefix % 2        # A holds the tokens at even positions of the full sequence
    unit = F.normalize(metric.to(work), dim=-1)
    a, b = unit[:, first_a::2], unit[:, 1 - first_a::2]
    num_a, num_b = a.shape[1], b.shape[1]
    best, partner = (a @ b.transpose(1, 2)).max(dim=-1)          # [B, num_a]
    order = best.argsort(dim=-1, descending=True)                # ToMe's edge order
    rank = torch.empty_like(order).scatter_(1, order, positions[:num_a].expand_as(order))
    merged = rank < r
    # Rows 0 .. num_a - r - 1 hold the unmerged A tokens, rows num_a - r + k the B token k.
    unmerged_row = (~merged).long().cumsum(dim=1) - 1 if num_prefix else rank - r
    row_of_a = torch.where(merged, num_a - r + partner, unmerged_row)
    row_of_b = num_a - r + positions[:num_b].expand_as(b[..., 0])
    # Interleave back to token order: token j is the (j // 2)-th of its set.
    in_b = (positions + first_a) % 2
    dest = torch.cat([row_of_a, row_of_b], dim=1).gather(
        1, (positions // 2 + in_b * num_a).expand_as(mass))
    return _block_matrix(dest, num_keep, mass)
