"""The paper's training-free peers as builders of W: TPS, PiToMe and Hourglass.

Each follows its authors' released code at inference (cited per function); where mmtt's
setting needs a choice their code does not make (earlier token sizes, several prefix tokens,
ties), the docstring says what is done. Like :mod:`.builders`, these take tokens without
prefix tokens and ``sizes: [B, N]`` (None: one original token each), and import only torch.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_floating, check_num_keep, check_tensor, is_int, is_real
from ._rows import gather_rows
from .token_matrix import MASS, SCATTER, TokenMatrix


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _ones_or(sizes: Optional[Tensor], like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.ones_like(like, dtype=dtype) if sizes is None else sizes.to(dtype)


def _check_sizes(sizes: Optional[Tensor], x: Tensor) -> None:
    if sizes is not None:
        check_tensor('sizes', sizes, 2, x.shape[:2])


def _merge_matrix(dest: Tensor, num_out: int, mass: Tensor, sizes: Tensor) -> TokenMatrix:
    """Column j goes wholly to row ``dest[j]`` with weight ``mass_j`` over its row's total mass,
    so each row is a weighted mean; the output sizes are the row totals of ``sizes``."""
    totals = mass.new_zeros(mass.shape[0], num_out).scatter_add_(1, dest, mass)
    weight = mass / totals.gather(1, dest)
    out_sizes = sizes.new_zeros(sizes.shape[0], num_out).scatter_add_(1, dest, sizes)
    return TokenMatrix(SCATTER, dest.shape[1], num_out, out_sizes, index=dest, weight=weight)


def _identity(n: int, sizes: Tensor) -> TokenMatrix:
    dest = torch.arange(n, device=sizes.device).expand_as(sizes)
    return _merge_matrix(dest, n, torch.ones_like(sizes), sizes)


def _check_positive(name: str, value: float) -> None:
    if not is_real(value) or not 0 < float(value) < math.inf:
        raise ValueError(f'{name}={value!r} must be a finite number > 0')


def tps_matrix(x: Tensor, scores: Tensor, num_keep: int, sizes: Optional[Tensor] = None, *,
               temperature: float = 1.0) -> TokenMatrix:
    """TPS's pruning and squeezing (Wei et al., CVPR 2023), training-free, as the inference
    branch of ``TPSModule`` (megvii-research/TPS-CVPR2023 ``torch_codebase/models/dynamic_vit.py``).

    1. The ``num_keep`` tokens of highest ``scores`` are kept (TPS: its learned predictor's
       score; here whichever score the caller gives, e.g. eq. 2's informative scores).
    2. Each pruned token p finds its most cosine-similar kept token k (TPS normalises with
       ``x / (|x| + 1e-6)``), and is squeezed into it with weight ``exp(cos_pk / temperature)``;
       the kept token itself has weight ``e`` (TPS's constant ``math.e``, its self-similarity
       1 at the default temperature 1). Row k of W is these weights over their sum:
       ``y_k = (e x_k + sum_p exp(cos_pk / T) x_p) / (e + sum_p exp(cos_pk / T))``.

    With ``sizes``, each weight is multiplied by the token's size (a weighted mean over
    original tokens, as mmtt's other merges; TPS's code has no sizes), and the output sizes
    are the sums of the squeezed tokens' sizes: sizes are conserved. A pruned token whose best
    similarity is tied goes to the first of the tied kept tokens (TPS's mask would give it to
    all of them, each with full weight, which does not conserve it).

    Args:
        x: ``[B, N, C]`` tokens compared (TPS: the hidden states).
        scores: ``[B, N]``; higher is kept.
        num_keep: K, in ``[1, N]``.
        sizes: ``[B, N]`` or None.
        temperature: TPS's ``temperature`` (1 in its models).

    Returns:
        A ``scatter`` :class:`TokenMatrix` whose K rows are the kept tokens in decreasing
        score order.
    """
    check_tensor('x', x, 3)
    check_floating('x', x)
    check_tensor('scores', scores, 2, x.shape[:2])
    _check_sizes(sizes, x)
    check_num_keep(num_keep, x.shape[1])
    _check_positive('temperature', temperature)
    work = _work_dtype(x)
    token_sizes = _ones_or(sizes, scores, work)
    order = scores.argsort(dim=1, descending=True)   # TPS: sort_idxs
    keep, pruned = order[:, :num_keep], order[:, num_keep:]
    unit = x.to(work)
    unit = unit / (unit.norm(dim=-1, keepdim=True) + 1e-6)
    kept_unit, pruned_unit = gather_rows(unit, keep), gather_rows(unit, pruned)
    with torch.autocast(x.device.type, enabled=False):
        cos = pruned_unit @ kept_unit.transpose(1, 2) / temperature   # [B, N - K, K]
    best, nearest = cos.max(dim=-1)
    rows = torch.arange(num_keep, device=x.device).expand_as(keep)
    dest = torch.empty_like(order).scatter_(1, keep, rows).scatter_(1, pruned, nearest)
    weight = torch.full_like(token_sizes, math.e).scatter_(1, pruned, best.exp())
    return _merge_matrix(dest, num_keep, weight * token_sizes, token_sizes)


def pitome_energy(metric: Tensor, margin: float, alpha: float = 1.0) -> Tuple[Tensor, Tensor]:
    """PiToMe's energy scores: ``(energy [B, N], cosine similarities [B, N, N])``.

    ``E_i = mean_j elu(cos(x_i, x_j) - margin, alpha)`` over all N tokens (itself included),
    as ``pitome_vision`` in hchautran/PiToMe ``algo/pitome/merge.py``. A high energy means many
    similar tokens (redundant, merged first); the lowest are the isolated, informative tokens.
    """
    unit = F.normalize(metric.to(_work_dtype(metric)), dim=-1)
    with torch.autocast(metric.device.type, enabled=False):
        sim = unit @ unit.transpose(1, 2)
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1), sim


def pitome_matrix(metric: Tensor, num_keep: int, sizes: Optional[Tensor] = None, *,
                  margin: float = 0.5, alpha: float = 1.0, protect: bool = True) -> TokenMatrix:
    """PiToMe (Tran et al., NeurIPS 2024) as hchautran/PiToMe ``algo/pitome/merge.py`` runs it
    for images (``pitome_vision`` with ``merge_wavg``): energy-ordered bipartite merging.

    Tokens are sorted by decreasing :func:`pitome_energy`; ``r = N - num_keep`` are merged.

    - ``protect=True`` (their ``pitome``): the ``N - 2r`` lowest-energy tokens are protected
      (kept as they are); the ``2r`` highest alternate, in energy order, between sets A (even
      ranks) and B (odd ranks), and every A token is merged into its most similar B token.
    - ``protect=False`` (their ``pitome_bsm``, which their DeiT patch uses in the first
      ``ceil(L / 2)`` blocks): all tokens alternate between A and B in energy order, and the
      r A tokens with the most similar B partner are merged, as in ToMe.

    Merges are size-weighted means (``merge_wavg``); sizes are conserved. The caller leaves
    out every prefix token (their code leaves out the class token only). Row order is their
    output order: protected (or unmerged A) tokens in their order above, then the B tokens in
    energy order. ``r = 0`` is the identity (their code skips the merge then).

    Args:
        metric: ``[B, N, C]`` features compared (PiToMe: head-averaged keys).
        num_keep: in ``[N - N // 2, N]`` (at most half is merged, as in their code).
        sizes: ``[B, N]`` or None.
        margin: the energy margin m; their DeiT patch uses ``0.75 - 0.75 l / L`` in block l of
            L, and ``pitome_vision`` defaults to 0.5.
        alpha: the ELU's alpha (1 in their code).
        protect: see above.

    Returns:
        A ``scatter`` :class:`TokenMatrix` with ``num_keep`` rows.
    """
    check_tensor('metric', metric, 3)
    check_floating('metric', metric)
    _check_sizes(sizes, metric)
    n = metric.shape[1]
    check_num_keep(num_keep, n, minimum=n - n // 2)
    if not is_real(margin) or not -1.0 <= float(margin) <= 1.0:
        raise ValueError(f'margin={margin!r} must be a number in [-1, 1] (it shifts a cosine similarity)')
    _check_positive('alpha', alpha)
    if not isinstance(protect, bool):
        raise ValueError(f'protect={protect!r} must be True or False')
    work = _work_dtype(metric)
    token_sizes = _ones_or(sizes, metric[..., 0], work)
    r = n - num_keep
    if r == 0:
        return _identity(n, token_sizes)
    energy, sim = pitome_energy(metric, float(margin), float(alpha))
    order = energy.argsort(dim=-1, descending=True)
    ranks = torch.arange(n, device=metric.device)
    matched = order[:, :2 * r] if protect else order
    a, b = matched[:, ::2], matched[:, 1::2]
    num_a, num_b = a.shape[1], b.shape[1]
    sim_ab = sim.gather(1, a[..., None].expand(-1, -1, n)).gather(2, b[:, None].expand(-1, num_a, -1))
    best, partner = sim_ab.max(dim=-1)                           # [B, num_a]
    if protect:   # every A token is merged; rows: protected tokens, then B
        first_b = n - 2 * r
        dest_a = first_b + partner
        dest_kept = ranks[:first_b].expand(a.shape[0], -1)
        kept = order[:, 2 * r:]
    else:         # ToMe's edge order: the r best-matched A tokens are merged
        first_b = num_a - r
        edge = best.argsort(dim=-1, descending=True)
        rank_of = torch.empty_like(edge).scatter_(1, edge, ranks[:num_a].expand_as(edge))
        dest_a = torch.where(rank_of < r, first_b + partner, rank_of - r)
        dest_kept, kept = dest_a[:, :0], a[:, :0]
    dest = torch.empty_like(order)
    dest.scatter_(1, kept, dest_kept).scatter_(1, a, dest_a)
    dest.scatter_(1, b, first_b + ranks[:num_b].expand_as(b))
    return _merge_matrix(dest, num_keep, token_sizes, token_sizes)


def cluster_grid(grid_size: Tuple[int, int], keep_ratio: float) -> Tuple[int, int]:
    """``(h', w')`` of Hourglass's cluster centres for a token grid and a keep ratio: each side
    scaled by ``sqrt(keep_ratio)``, rounded, at least 1 (Expedit-Segmenter's 28 x 28 of
    40 x 40 is ``keep_ratio=0.49``, its 32 x 32 of 48 x 48 is ``4 / 9``)."""
    scale = math.sqrt(float(keep_ratio))
    return tuple(min(side, max(1, round(side * scale))) for side in grid_size)


def check_grid_size(grid_size, num_tokens: int) -> Tuple[int, int]:
    """``grid_size`` as ``(h, w)`` ints with ``h * w == num_tokens``."""
    if (not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2
            or not all(is_int(s) and s >= 1 for s in grid_size)):
        raise ValueError(f'grid_size={grid_size!r} must be (h, w), two ints >= 1 (the token grid)')
    h, w = int(grid_size[0]), int(grid_size[1])
    if h * w != num_tokens:
        raise ValueError(f'grid_size={grid_size!r} holds {h * w} tokens, but there are '
                         f'{num_tokens} reducible tokens')
    return h, w


def check_clustering(iterations: int, window: int, temperature: float,
                     names: Tuple[str, str, str] = ('iterations', 'window', 'temperature')) -> None:
    """Hourglass's clustering settings: k-means rounds (int >= 1), the neighbourhood of centres
    (odd int >= 1) and the temperature (finite, > 0); ``names`` are the caller's keys."""
    if not is_int(iterations) or iterations < 1:
        raise ValueError(f'{names[0]}={iterations!r} must be an int >= 1 (k-means rounds)')
    if not is_int(window) or window < 1 or window % 2 == 0:
        raise ValueError(f'{names[1]}={window!r} must be an odd int >= 1 (neighbourhood of centres)')
    _check_positive(names[2], temperature)


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """``[B, N, M]`` squared L2 distances of ``x: [B, N, C]`` to ``c: [B, M, C]``, formed as
    Expedit's ``pairwise_dist`` (``|x|^2 + |c|^2 - 2 x.c``)."""
    with torch.autocast(x.device.type, enabled=False):
        return torch.baddbmm(x.pow(2).sum(-1)[..., None] + c.pow(2).sum(-1)[:, None], x,
                             c.transpose(1, 2), alpha=-2)


def hourglass_matrix(x: Tensor, grid_size: Tuple[int, int], clusters: Tuple[int, int],
                     sizes: Optional[Tensor] = None, *, iterations: int = 5, window: int = 5,
                     temperature: float = 0.02) -> TokenMatrix:
    """Hourglass's token clustering layer (Liang et al., NeurIPS 2022), as
    ``TokenClusteringBlock`` in Expedit-LargeScale-Vision-Transformer/Expedit-Segmenter
    ``mmseg/ops/cluster.py`` runs it.

    1. Centres: the token grid ``[h, w]`` average-pooled to ``clusters = (h', w')``
       (``adaptive_avg_pool2d``); each token's initial label is its pooling cell (the label
       grid upsampled with ``mode='nearest'``).
    2. ``iterations`` rounds of soft k-means: token n's affinity to centre s is the softmax
       over s of ``-temperature |x_n - c_s|^2``, over the centres within ``window // 2`` cells
       of its initial label in both directions only; each centre becomes the affinity-weighted
       mean of the tokens.

    W is the last round's affinity, row-normalised: the clustered tokens are W X. Their sizes
    are the affinity sums (soft token counts): every column of the affinity sums to 1, so sizes
    are conserved. With ``sizes``, each token's affinity is weighted by its size (Expedit's
    code clusters the first, unreduced tokens only). Expedit's defaults for Segmenter-L are
    ``iterations=5``, ``window=5``, ``temperature=0.02``.

    Args:
        x: ``[B, h * w, C]`` tokens in row-major grid order (hidden states).
        grid_size: ``(h, w)``.
        clusters: ``(h', w')``, each side in ``[1, side]``.
        sizes: ``[B, h * w]`` or None.
        iterations: k-means rounds, >= 1.
        window: the odd side of each token's neighbourhood of centres, >= 1.
        temperature: multiplies the squared distances (Expedit's ``temperture``), > 0.

    Returns:
        A ``mass`` :class:`TokenMatrix` with ``h' w'`` rows, in row-major order of the
        centres' grid; its ``index`` is each token's centre of largest affinity.
    """
    check_tensor('x', x, 3)
    check_floating('x', x)
    h, w = check_grid_size(grid_size, x.shape[1])
    if (not isinstance(clusters, (tuple, list)) or len(clusters) != 2
            or not all(is_int(c) for c in clusters) or not (1 <= clusters[0] <= h and 1 <= clusters[1] <= w)):
        raise ValueError(f'clusters={clusters!r} must be (h\', w\') ints with 1 <= h\' <= {h}, '
                         f'1 <= w\' <= {w}')
    _check_sizes(sizes, x)
    check_clustering(iterations, window, temperature)
    ch, cw = int(clusters[0]), int(clusters[1])
    batch, n, channels = x.shape
    work = _work_dtype(x)
    feats = x.to(work)
    grid = feats.transpose(1, 2).reshape(batch, channels, h, w)
    centres = F.adaptive_avg_pool2d(grid, (ch, cw)).flatten(2).transpose(1, 2)   # [B, M, C]
    num_out = ch * cw
    cells = torch.arange(num_out, device=x.device, dtype=work).view(1, 1, ch, cw)
    label = F.interpolate(cells, size=(h, w), mode='nearest').view(n).long()
    centre = torch.arange(num_out, device=x.device)
    radius = window // 2
    near = (((label[:, None] // cw) - (centre[None] // cw)).abs() <= radius) & \
           (((label[:, None] % cw) - (centre[None] % cw)).abs() <= radius)   # [N, M]
    token_sizes = None if sizes is None else sizes.to(work)[..., None]
    for _ in range(iterations):
        logits = _sq_dist(feats, centres).mul_(-float(temperature)).masked_fill_(~near, -math.inf)
        affinity = logits.softmax(dim=-1)                                    # [B, N, M]
        mass = affinity if token_sizes is None else affinity * token_sizes
        totals = mass.sum(dim=1)                                             # [B, M]
        with torch.autocast(x.device.type, enabled=False):
            centres = (mass.transpose(1, 2) @ feats) / totals[..., None].clamp_min(1e-16)
    return TokenMatrix(MASS, n, num_out, totals, index=affinity.argmax(dim=-1), weight=mass)


def reconstruction_relation(x: Tensor, y: Tensor, k: int = 20, temperature: float = 0.02) -> Tensor:
    """Hourglass's token reconstruction weights, as ``TokenReconstructionBlock`` in
    Expedit-Segmenter ``mmseg/ops/reconstruction.py``: ``[B, N, M]``.

    Token n's weight on reduced token m is ``exp(-temperature |x_n - y_m|^2)``, kept for its k
    largest (ties at the k-th included), and each row is L2-normalised (their
    ``F.normalize(attention, dim=2)``; a row therefore sums to 1 only when one weight
    dominates, which at temperature 0.02 on ViT features it usually does). The token is then
    rebuilt as ``relation @ tokens`` from the reduced tokens at the output. The exponent is
    shifted by each row's largest value first (which the L2 normalisation cancels), so a token
    far from every centre is not lost to underflow as ``exp(-0.02 d^2)`` would lose it.

    Args:
        x: ``[B, N, C]``, tokens before the reduction (the clustering layer's input).
        y: ``[B, M, C]``, tokens after it.
        k: neighbours kept, >= 1 (Expedit: 20); clamped to M.
        temperature: > 0 (Expedit: 0.02).
    """
    check_tensor('x', x, 3)
    check_tensor('y', y, 3, (x.shape[0], None, x.shape[2]))
    if not is_int(k) or k < 1:
        raise ValueError(f'k={k!r} must be an int >= 1 (reduced tokens each token is rebuilt from)')
    _check_positive('temperature', temperature)
    work = _work_dtype(x)
    logits = _sq_dist(x.to(work), y.to(work)).mul_(-float(temperature))
    logits = logits - logits.amax(dim=-1, keepdim=True)
    weight = logits.exp()
    kth = weight.topk(min(int(k), y.shape[1]), dim=-1).values[..., -1:]
    weight = torch.where(weight >= kth, weight, torch.zeros_like(weight))
    return F.normalize(weight, dim=-1)
