"""Visual-token reductions of LLaVA-1.5 by other authors, each as a W form (``Y = W X``, eq. 1).

They reduce the feature layer's output once, from class attention and keys:

- PruMerge (42Shawn/LLaVA-PruMerge, ``token_prune_merge_advanced``): keep the patch tokens whose
  class attention is an outlier (above ``Q3 + 1.5 IQR``), add to each its 32 nearest tokens by
  key cosine similarity weighted by their class attention, and append one token, the
  attention-weighted sum of the tokens not kept. PruMerge+ (``..._plus``) adds spatially
  uniform samples to the kept tokens.
- VisionZip (dvlab-research/VisionZip, ``CLIPVisionTower_VisionZip.forward``): dominant tokens,
  the class token and the patches with the most class attention (summed over heads); contextual
  tokens, evenly spaced targets among the rest, each plus the mean of the other tokens that are
  most similar to it by head-averaged keys.

The builders return a dense :class:`TokenMatrix` (W is at most a few hundred rows), so its
``apply`` is the reduction and its rows say which tokens each output token stands for.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_tensor
from .token_matrix import DENSE, TokenMatrix

# PruMerge's merge neighbourhood (``torch.topk(cos_sim_matrix, k=int(32))`` in their code).
PRUMERGE_NEIGHBOURS = 32


def iqr_outlier_count(cls_attn: Tensor) -> Tensor:
    """PruMerge's adaptive count: per image, the tokens whose class attention lies above
    ``Q3 + 1.5 (Q3 - Q1)`` (quartiles interpolated linearly, as ``np.percentile``).

    Args:
        cls_attn: ``[B, N]`` class attention of the patch tokens.

    Returns:
        ``[B]`` int64 counts.
    """
    check_tensor('cls_attn', cls_attn, 2)
    work = cls_attn.to(torch.promote_types(cls_attn.dtype, torch.float32))
    quartiles = torch.quantile(work, torch.tensor([0.25, 0.75], dtype=work.dtype, device=work.device), dim=1)
    upper = quartiles[1] + 1.5 * (quartiles[1] - quartiles[0])
    return (work > upper[:, None]).sum(dim=1)


def _batch_count(counts: Tensor, what: str) -> int:
    if bool((counts != counts[0]).any()):
        raise ValueError(f'{what}: the images of the batch have different outlier counts '
                         f'{counts.tolist()}; give a token budget or reduce one image at a time')
    return int(counts[0])


def spatial_samples(taken: Tensor, num_tokens: int, count: int) -> Tensor:
    """``count`` positions per image spread evenly over those not in ``taken`` (``[B, T]``), in
    increasing order: PruMerge+'s spatially uniform supplement at a fixed budget. ``[B, count]``."""
    free = torch.ones(taken.shape[0], num_tokens, dtype=torch.bool, device=taken.device)
    free.scatter_(1, taken, False)
    order = torch.arange(num_tokens, device=taken.device).expand(taken.shape[0], -1)
    rest = order[free].view(taken.shape[0], -1)   # ascending, N - T each
    picks = torch.arange(count, device=taken.device) * rest.shape[1] // max(count, 1)
    return rest[:, picks]


def prumerge_matrix(keys: Tensor, cls_attn: Tensor, num_keep: Optional[int] = None, *,
                    plus: bool = False, neighbours: int = PRUMERGE_NEIGHBOURS) -> TokenMatrix:
    """PruMerge (``plus=False``) or PruMerge+ as W: ``[B, K + 1, N]``.

    Row ``r < K`` is kept token ``i = kept[r]`` plus its ``neighbours`` most key-similar other
    tokens, each times its class attention (unnormalised, as in their code); the last row is
    the class-attention-weighted sum of the tokens not kept.

    Args:
        keys: ``[B, N, C]`` keys of the patch tokens (PruMerge: all heads concatenated).
        cls_attn: ``[B, N]`` class attention of the patch tokens.
        num_keep: K, the kept tokens (the output has K + 1). None: the authors' adaptive count,
            the IQR outliers (PruMerge+: plus every ``int(int(N / outliers) / 3)``-th position
            not among them); the batch's images must then agree on it.
        plus: PruMerge+. With ``num_keep`` the outliers (at most K) come first and K less
            their number evenly spaced positions among the others fill the budget.
        neighbours: merged neighbours per kept token (their 32), capped at N - 1.
    """
    check_tensor('keys', keys, 3)
    check_tensor('cls_attn', cls_attn, 2, keys.shape[:2])
    batch, n = cls_attn.shape
    outliers = iqr_outlier_count(cls_attn)
    if num_keep is None:
        count = _batch_count(outliers, 'prumerge')
        # Their ratio: outliers / N, kept int(N * ratio) (float rounding included).
        top = max(1, int(n * (count / n)))
        kept = cls_attn.topk(top, dim=1).indices
        if plus:
            step = max(1, int(int(1 / (top / n)) / 3))
            grid = torch.arange(0, n - 1, step, device=keys.device)
            extra = grid[~torch.isin(grid, kept[0])]
            kept = torch.cat([kept, extra.expand(batch, -1)], dim=1)
    else:
        if not 1 <= num_keep < n:
            raise ValueError(f'num_keep={num_keep} must be in [1, {n - 1}] for {n} tokens')
        if plus:
            top = int(outliers.clamp(max=num_keep).min())
            kept = cls_attn.topk(top, dim=1).indices
            kept = torch.cat([kept, spatial_samples(kept, n, num_keep - top)], dim=1)
        else:
            kept = cls_attn.topk(num_keep, dim=1).indices
    k = kept.shape[1]
    work = torch.promote_types(keys.dtype, torch.float32)
    unit = F.normalize(keys.to(work), dim=-1)
    attn = cls_attn.to(work)
    rows = torch.arange(batch, device=keys.device)[:, None]
    sim = unit[rows, kept] @ unit.transpose(1, 2)   # [B, K, N]
    sim.scatter_(2, kept[..., None], float('-inf'))   # a kept token is not its own neighbour
    near = sim.topk(min(neighbours, n - 1), dim=2).indices   # [B, K, k]
    weight = keys.new_zeros(batch, k + 1, n, dtype=work)
    weight.scatter_(2, near, attn[:, None].expand(-1, k, -1).gather(2, near))
    weight[:, :k].scatter_(2, kept[..., None], 1.0)
    others = torch.ones(batch, n, dtype=torch.bool, device=keys.device)
    others.scatter_(1, kept, False)
    weight[:, k] = attn * others
    sizes = torch.cat([torch.full((batch, k), 1.0 + near.shape[2], dtype=work, device=keys.device),
                       others.sum(dim=1, keepdim=True).to(work)], dim=1)
    return TokenMatrix(DENSE, n, k + 1, sizes, weight=weight)


def visionzip_matrix(cls_attn: Tensor, keys: Tensor, dominant: int, contextual: int) -> TokenMatrix:
    """VisionZip as W over the class token and the patches: ``[B, dominant + contextual, 1 + N]``.

    Rows: the ``dominant`` dominant tokens (the class token and the ``dominant - 1`` patches
    with the most class attention) in token order, then ``contextual`` tokens: targets every
    ``(N - dominant + 1) // contextual``-th of the remaining tokens, each plus the mean of the
    other remaining tokens whose keys are closest (cosine) to it.

    Args:
        cls_attn: ``[B, N]`` class attention of the patches (summed or averaged over heads).
        keys: ``[B, 1 + N, d]`` head-averaged keys, class token first.
        dominant: dominant tokens, the class token included (their ``dominant``).
        contextual: contextual tokens.
    """
    check_tensor('cls_attn', cls_attn, 2)
    check_tensor('keys', keys, 3, (cls_attn.shape[0], cls_attn.shape[1] + 1, None))
    batch, n = cls_attn.shape
    if dominant < 1 or contextual < 0 or dominant - 1 + contextual > n:
        raise ValueError(f'dominant={dominant}, contextual={contextual}: need dominant >= 1, '
                         f'contextual >= 0 and dominant - 1 + contextual <= {n} patches')
    device = keys.device
    top = cls_attn.topk(dominant - 1, dim=1).indices + 1
    chosen = torch.ones(batch, n + 1, dtype=torch.bool, device=device)
    chosen.scatter_(1, top, False)
    chosen[:, 0] = False
    order = torch.arange(n + 1, device=device).expand(batch, -1)
    dominant_tokens = order[~chosen].view(batch, dominant)   # ascending, class token first
    rest = order[chosen].view(batch, -1)   # ascending
    work = torch.promote_types(keys.dtype, torch.float32)
    weight = keys.new_zeros(batch, dominant + contextual, n + 1, dtype=work)
    weight[:, :dominant].scatter_(2, dominant_tokens[..., None], 1.0)
    sizes = torch.ones(batch, dominant + contextual, dtype=work, device=device)
    if contextual:
        num_rest = rest.shape[1]
        step = max(1, num_rest // contextual)
        targets = torch.arange(0, num_rest, step, device=device)[:contextual]
        is_target = torch.zeros(num_rest, dtype=torch.bool, device=device)
        is_target[targets] = True
        rows = torch.arange(batch, device=device)[:, None]
        unit = keys.to(work)[rows, rest]
        unit = unit / unit.norm(dim=-1, keepdim=True)
        merged = rest[:, ~is_target]
        nearest = (unit[:, ~is_target] @ unit[:, targets].transpose(1, 2)).argmax(dim=2)
        counts = torch.zeros(batch, contextual, dtype=work, device=device)
        counts.scatter_add_(1, nearest, torch.ones_like(nearest, dtype=work))
        share = 1.0 / counts.clamp(min=1).gather(1, nearest)   # [B, merged]
        context = weight[:, dominant:]
        context.scatter_(2, rest[:, targets][..., None], 1.0)
        context[rows, nearest, merged] = share
        sizes[:, dominant:] = 1.0 + counts
    return TokenMatrix(DENSE, n + 1, dominant + contextual, sizes, weight=weight)


def visionzip_split(num_tokens: int) -> tuple:
    """``(dominant, contextual)`` for ``num_tokens`` visual tokens, the authors' proportion
    (54 + 10, 108 + 20, 162 + 30 for 64, 128, 192)."""
    contextual = num_tokens * 5 // 32
    return num_tokens - contextual, contextual
