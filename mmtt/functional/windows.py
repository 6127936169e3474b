"""Token Transforming inside windowed attention (Swin), as pure tensor functions.

Window attention needs every window to be a square grid of tokens. Here each ``window x
window`` window is reduced to a smaller ``grid x grid`` one: the window is cut into a
``grid x grid`` lattice of cells, the most informative token of each cell (eq. 2) is that
slot's query, and the many-to-many W of eq. 3-6 maps all the window's tokens onto the slots.
Each output token keeps the position of its query (its "anchor"), from which the host's own
relative-position table gives exact biases in the reduced windows.

Maps are ``[B, H, W, C]`` (channels last) and windows ``[B * nW, window * window, C]`` in
row-major order of the windows within each image, as mmdet's Swin lays them out.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._checks import check_choice, check_kappa, check_tau, check_tensor
from ._rows import gather_rows
from .builders import ORPHAN_RULES, SIMILARITIES, matrix_from_queries

# The host's logit for pairs split by the cyclic shift (mmdet's ShiftWindowMSA uses -100).
SHIFT_MASK_VALUE = -100.0


def window_partition(x: Tensor, window: int) -> Tensor:
    """``x: [B, H, W, C]`` with H, W multiples of ``window`` -> ``[B * nW, window**2, C]``."""
    check_tensor('x', x, 4)
    b, h, w, c = x.shape
    if h % window or w % window:
        raise ValueError(f'map of {h}x{w} is not a whole number of {window}x{window} windows')
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window**2, C]`` -> ``[B, H, W, C]``."""
    check_tensor('windows', windows, 3, (None, window * window, None))
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int,
                        device: Optional[torch.device] = None) -> Tensor:
    """Additive mask of shifted-window attention on a map rolled by ``-shift``: ``[nW, N, N]``.

    After the cyclic roll, the last window row/column holds tokens from both ends of the
    map; pairs from different regions get :data:`SHIFT_MASK_VALUE`, the others 0.
    """
    def regions(size: int) -> Tensor:
        pos = torch.arange(size, device=device)
        return (pos >= size - window).long() + (pos >= size - shift).long()

    region = regions(height)[:, None] * 3 + regions(width)[None, :]
    ids = window_partition(region[None, :, :, None].float(), window)[..., 0]   # [nW, N]
    differ = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, SHIFT_MASK_VALUE)


def grid_cells(window: int, grid: int, device: Optional[torch.device] = None) -> Tensor:
    """Cell of each window position, ``[window**2]`` long: the window's rows and columns are
    split into ``grid`` runs of ``window / grid`` (rounded down at each boundary)."""
    if not 1 <= grid <= window:
        raise ValueError(f'grid={grid} must be in [1, window={window}]')
    coord = torch.arange(window, device=device) * grid // window
    return (coord[:, None] * grid + coord[None, :]).flatten()


def _positions(window: int, device: Optional[torch.device]) -> Tensor:
    pos = torch.arange(window, device=device)
    return torch.stack(torch.meshgrid(pos, pos, indexing='ij'), dim=-1).view(-1, 2).float()


def grid_queries(scores: Optional[Tensor], valid: Tensor, window: int, grid: int) -> Tensor:
    """The query of every slot of the reduced ``grid x grid`` window, ``[B', grid**2]`` long.

    Slot ``k`` takes the real token of highest score in cell ``k`` (eq. 2 within the cell).
    A cell that holds only padding takes the real token nearest to its centre instead, so a
    slot never stands for padding; such duplicated queries split their tokens' mass evenly
    (equal rows of W), which attention with the size bias treats as one token.

    Args:
        scores: ``[B', window**2]`` informative scores of each window's tokens, or None to
            take the token nearest each cell's centre (uniform selection).
        valid: ``[B', window**2]`` bool, False at padding; every window needs a real token.
        window: side of the windows.
        grid: side of the reduced windows, ``1 <= grid <= window``.
    """
    n = window * window
    check_tensor('valid', valid, 2, (None, n))
    cells = grid_cells(window, grid, valid.device)
    member = cells[None, :] == torch.arange(grid * grid, device=valid.device)[:, None]   # [G, N]
    pos = _positions(window, valid.device)
    centres = (member.float() @ pos) / member.sum(1, keepdim=True)                     # [G, 2]
    dist = torch.cdist(centres, pos)                                                   # [G, N]
    if scores is None:
        scores = -dist.gather(0, cells[None]).squeeze(0).expand(valid.shape[0], -1)
    check_tensor('scores', scores, 2, valid.shape)
    lowest = torch.finfo(torch.float32).min
    in_cell = member[None] & valid[:, None, :]                                         # [B', G, N]
    best = scores.float()[:, None, :].masked_fill(~in_cell, lowest).argmax(-1)
    nearest = dist[None].masked_fill(~valid[:, None, :], float('inf')).argmin(-1)
    return torch.where(in_cell.any(-1), best, nearest)


def grid_transform(x: Tensor, queries: Tensor, kappa: float, tau: float,
                   sizes: Optional[Tensor] = None, *, similarity_kind: str = 'cosine',
                   orphans: str = 'spread') -> Tuple[Tensor, Tensor]:
    """Token Transforming's W (eq. 3-6) and s (eq. 8) with the queries given per slot.

    :func:`mmtt.functional.transform_matrix` with its top-M selection replaced by
    ``queries`` (which may repeat). Tokens of size 0 (padding) take no part in any output.

    Args:
        x: window tokens ``[B', N, C]``.
        queries: ``[B', M]`` indices into N, e.g. from :func:`grid_queries`.
        kappa, tau, similarity_kind, orphans: as in :func:`transform_matrix`.
        sizes: ``[B', N]`` sizes of the tokens (0 for padding), or None for all 1.

    Returns:
        ``(W [B', M, N], s [B', M])``; row ``i`` of W is slot ``i``.
    """
    check_tensor('x', x, 3)
    check_tensor('queries', queries, 2, (x.shape[0], None))
    if sizes is not None:
        check_tensor('sizes', sizes, 2, x.shape[:2])
    check_kappa(kappa)
    check_tau(tau)
    check_choice('similarity', similarity_kind, SIMILARITIES)
    check_choice('orphans', orphans, ORPHAN_RULES)
    picked = gather_rows(x, queries)
    return matrix_from_queries(x, picked, kappa, tau, sizes, similarity_kind, orphans)


def anchored_relative_bias(table: Tensor, anchors: Tensor, window: int) -> Tensor:
    """Relative-position bias between tokens at arbitrary positions: ``[B', heads, n, n]``.

    Args:
        table: the host's ``[(2 * window - 1)**2, heads]`` relative-position bias table.
        anchors: ``[B', n, 2]`` long (row, column) position of each token.
        window: the window the table was made for; offsets beyond ``window - 1`` are
            clamped to it (the table has no entry further away).
    """
    check_tensor('table', table, 2, ((2 * window - 1) ** 2, None))
    check_tensor('anchors', anchors, 3, (None, None, 2))
    offset = (anchors[:, :, None, :] - anchors[:, None, :, :]).clamp(1 - window, window - 1)
    offset = offset + (window - 1)
    index = offset[..., 0] * (2 * window - 1) + offset[..., 1]
    return table[index].permute(0, 3, 1, 2)


def grid_recover(tokens: Tensor, index: Optional[Tensor], window: int, grid: int,
                 padded: Tuple[int, int], size: Tuple[int, int],
                 relation: Optional[Tensor] = None) -> Tensor:
    """Eq. 10 per window: reduced map ``[B, Hr, Wr, C]`` -> full map ``[B, H, W, C]``.

    Args:
        tokens: the reduced map, ``Hr = Hp / window * grid`` (likewise Wr).
        index: ``[B * nW, window**2]``: the slot of its window each original token takes; or
            None with ``relation``.
        padded: ``(Hp, Wp)``, the full map padded to whole windows.
        size: ``(H, W)``, the full map without padding.
        relation: ``[B * nW, window**2, grid**2]``, a soft map instead of ``index`` (Hourglass's
            reconstruction within each window): each original token is ``relation @ slots``.
    """
    check_tensor('tokens', tokens, 4)
    slots = window_partition(tokens, grid)
    if relation is not None:
        check_tensor('relation', relation, 3, (slots.shape[0], window * window, grid * grid))
        full = torch.bmm(relation.to(slots.dtype), slots)
    else:
        check_tensor('index', index, 2, (slots.shape[0], window * window))
        full = gather_rows(slots, index)
    return window_reverse(full, window, *padded)[:, :size[0], :size[1]]
