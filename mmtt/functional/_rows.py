"""Picking rows of a batch of token sets, the one indexing step every reduction repeats."""
import torch
from torch import Tensor


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i]]``: the rows of ``x: [B, N, C]`` named by ``index: [B, M]``, ``[B, M, C]``.

    Equal to ``x.gather(1, index[..., None].expand(-1, -1, C))``. One ``index_select`` over the
    batch flattened into rows reads each picked row once; ``gather`` with an index expanded over
    C computes an address per element, several times slower on CPU for token-sized rows.
    """
    batch, num_rows, channels = x.shape
    offset = torch.arange(batch, device=index.device)[:, None] * num_rows
    picked = x.reshape(-1, channels).index_select(0, (index + offset).flatten())
    return picked.view(batch, index.shape[1], channels)
