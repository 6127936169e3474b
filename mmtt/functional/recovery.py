"""Nearest-neighbour token recovery (eq. 9-10), composable over several reductions."""
import torch
from torch import Tensor

from ._checks import check_tensor
from ._rows import gather_rows


def nearest_recovery_index(x: Tensor, y: Tensor) -> Tensor:
    """Eq. 9: ``I_m = argmin_i ||X_m - Y_i||``.

    Args:
        x: tokens before a reduction, ``[B, N, C]``.
        y: tokens after it, ``[B, M, C]``.

    Returns:
        ``[B, N]`` long: for each original token, the index of its nearest reduced token.
    """
    check_tensor('x', x, 3)
    check_tensor('y', y, 3, (x.shape[0], None, x.shape[2]))
    work = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(work), y.to(work)
    # ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2; ||x||^2 is the same for every candidate.
    # baddbmm forms ||y||^2 - 2 x.y in the product's own pass.
    dist = torch.baddbmm(y.pow(2).sum(-1)[:, None, :], x, y.transpose(1, 2), alpha=-2)
    return dist.argmin(dim=-1)


def compose_recovery_index(first: Tensor, second: Tensor) -> Tensor:
    """Index of two reductions in a row: ``first: [B, N0]`` into N1 tokens, then
    ``second: [B, N1]`` into N2 tokens; returns ``[B, N0]`` into the N2 tokens."""
    check_tensor('first', first, 2)
    check_tensor('second', second, 2, (first.shape[0], None))
    return second.gather(1, first)


def recover_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Eq. 10: ``X~_m = Y~_{I_m}``; ``tokens: [B, M, C]``, ``index: [B, N]`` -> ``[B, N, C]``."""
    check_tensor('tokens', tokens, 3)
    check_tensor('index', index, 2, (tokens.shape[0], None))
    return gather_rows(tokens, index)
