"""Token reduction inside windowed attention: each ``window x window`` window of a token map
becomes a ``grid x grid`` window (see :mod:`mmtt.hosts.mmdet` for the layout, the
position and size bias, and padding), by Token Transforming or by Hourglass's clustering.
Pure tensor code over :mod:`mmtt.functional.windows`; no host import, so any windowed
backbone can use it.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.peers import hourglass_matrix
from ..functional.token_matrix import DENSE, TokenMatrix
from ..functional.windows import grid_queries, grid_recover, grid_transform, window_partition, window_reverse
from .methods import clustering
from .token_recovery import TokenRecovery
from .token_transform import TokenTransform


def pad_to(size: int, window: int) -> int:
    return -(-size // window) * window


class WindowGrid(NamedTuple):
    """A stage's tokens after its reduction; made by :class:`WindowTokenTransform`.

    Attributes:
        size: ``(H, W)`` of the full map; ``padded``: ``(Hp, Wp)``, whole windows.
        window, grid: sides of the host's and of the reduced windows.
        sizes: ``[B, Hr, Wr]`` token sizes s (eq. 8).
        anchors: ``[B, Hr, Wr, 2]`` long, position of each token's query in the padded map.
        index: ``[B * nW, window**2]``, recovery index of each original token (eq. 9), or
            None when ``relation`` is set.
        relation: ``[B * nW, window**2, grid**2]``, the soft recovery map of
            ``TokenRecovery(mode='reconstruct')`` (Hourglass), else None.
    """
    size: Tuple[int, int]
    padded: Tuple[int, int]
    window: int
    grid: int
    sizes: Tensor
    anchors: Tensor
    index: Optional[Tensor]
    relation: Optional[Tensor] = None

    @property
    def reduced_size(self) -> Tuple[int, int]:
        return (self.padded[0] // self.window * self.grid, self.padded[1] // self.window * self.grid)

    def recover(self, x: Tensor) -> Tensor:
        """``[B, Hr * Wr, C]`` -> ``[B, H * W, C]`` (eq. 10)."""
        full = grid_recover(x.view(x.shape[0], *self.reduced_size, -1), self.index, self.window,
                            self.grid, self.padded, self.size, self.relation)
        return full.reshape(x.shape[0], -1, x.shape[-1])


class WindowTokenTransform(nn.Module):
    """Reduces every ``window x window`` window to ``grid x grid`` tokens; no parameters.

    ``method='transform'``: the slots' queries are each cell's most informative token and W is
    eq. 3-6 (:func:`~mmtt.functional.windows.grid_transform`). ``method='hourglass'``: each
    window is clustered to a ``grid x grid`` centre grid (:func:`~mmtt.functional.hourglass_matrix`,
    as Expedit-DINO's ``HourglassSwinTransformer`` clusters per window), padding taking no
    part; each centre is placed at the token nearest its cell's centre for the position bias
    (Expedit instead resizes the bias table to the smaller window).

    Args:
        transform: the ``TokenTransform`` holding the method and its settings.
        recovery: the ``TokenRecovery`` whose index (eq. 9) the stage recovers with.
        window, grid: sides of the host's and of the reduced windows.
    """

    def __init__(self, transform: TokenTransform, recovery: TokenRecovery, window: int,
                 grid: int) -> None:
        super().__init__()
        self.transform, self.recovery = transform, recovery
        self.window, self.grid = window, grid

    def forward(self, x: Tensor, size: Tuple[int, int],
                scores: Optional[Tensor] = None) -> Tuple[Tensor, WindowGrid]:
        """``x: [B, H * W, C]``, ``scores: [B, Hp, Wp]`` -> ``([B, Hr * Wr, C], WindowGrid)``."""
        t, window, grid = self.transform, self.window, self.grid
        b, c = x.shape[0], x.shape[-1]
        h, w = size
        hp, wp = pad_to(h, window), pad_to(w, window)
        pad = (0, 0, 0, wp - w, 0, hp - h)
        windows = window_partition(F.pad(x.reshape(b, h, w, c), pad), window)
        valid = window_partition(F.pad(x.new_ones(b, h, w, 1), pad), window)[..., 0]
        win_scores = None if scores is None else window_partition(scores[..., None], window)[..., 0]
        if t.method == 'hourglass':
            queries = grid_queries(None, valid > 0, window, grid)
            matrix = hourglass_matrix(windows, (window, window), (grid, grid), valid, **clustering(t.options))
            # A centre with only padding near it has no mass: a tiny size keeps log s finite,
            # so a shifted window of such slots never softmaxes a row of -inf.
            sizes = matrix.sizes.clamp_min(torch.finfo(matrix.sizes.dtype).tiny)
        else:
            queries = grid_queries(win_scores, valid > 0, window, grid)
            weight, sizes = grid_transform(windows, queries, t.kappa, t.tau, valid,
                                           similarity_kind=t.similarity, orphans=t.orphans)
            matrix = TokenMatrix(DENSE, window * window, grid * grid, sizes, weight=weight)
        reduced = matrix.apply(windows)
        if self.recovery.soft:
            index, relation = None, self.recovery.relation(windows, reduced)
        else:
            index, relation = self.recovery.index(windows, reduced, 0, matrix), None
        coords = torch.stack(torch.meshgrid(torch.arange(hp, device=x.device),
                                            torch.arange(wp, device=x.device), indexing='ij'), -1)
        anchors = window_partition(coords.expand(b, -1, -1, -1), window).gather(
            1, queries[..., None].expand(-1, -1, 2))
        hr, wr = hp // window * grid, wp // window * grid
        out = WindowGrid((h, w), (hp, wp), window, grid,
                         window_reverse(sizes[..., None], grid, hr, wr)[..., 0],
                         window_reverse(anchors, grid, hr, wr), index, relation)
        return window_reverse(reduced, grid, hr, wr).reshape(b, hr * wr, c), out

    def extra_repr(self) -> str:
        return f'window={self.window}, grid={self.grid}'
