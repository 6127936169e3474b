"""``Y = W X`` (eq. 1) with W stored in the cheapest form its structure allows."""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ._checks import check_tensor
from ._rows import add_rows, gather_rows

GATHER, SCATTER, DENSE, MASS = 'gather', 'scatter', 'dense', 'mass'


@dataclass
class TokenMatrix:
    """A token-reduction matrix ``W: [B, M, N]`` and the sizes of the M output tokens.

    Every reduction method is a way of building one of these; :meth:`apply` is the one
    routine that applies them, using the cheap path for each form:

    - ``gather`` (pruning, one-hot rows): ``index[b, i]`` is the column kept as row ``i``;
      ``Y = X[index]``.
    - ``scatter`` (merging, one non-zero per column): column ``j`` goes to row ``index[b, j]``
      with coefficient ``weight[b, j]``; ``Y = scatter_add(weight * X)``. With ``index`` and
      ``weight`` of shape ``[B, k, N]`` (Token Transforming with ``top_k``), column ``j`` goes
      to the k rows ``index[b, :, j]``.
    - ``dense`` (many-to-many): ``weight`` is W itself; ``Y = W @ X``.
    - ``mass`` (Token Transforming, many-to-many): ``weight[b, j, i]`` is the mass token ``j``
      sends to output ``i`` (``m_ij sizes_j``, eq. 5 and 8), token-major, so that ``W_ij =
      weight[b, j, i] / sizes[b, i]`` and ``Y = (weight^T X) / sizes``: W is never formed, and
      eq. 5's softmax runs over contiguous memory. ``index[b, j]`` is the row with token
      ``j``'s largest share (its most similar informative token).

    Attributes:
        kind: ``'gather'``, ``'scatter'`` or ``'dense'``.
        num_in: N, tokens before the reduction.
        num_out: M, tokens after it.
        sizes: ``[B, M]``, how many original tokens each output token stands for (``s`` of
            eq. 7-8); the attention of the following layers adds ``log sizes`` to its logits.
        index: ``[B, M]`` (gather), ``[B, N]`` / ``[B, k, N]`` (scatter; with k, slot 0 holds
            the largest share), ``[B, N]`` (mass); None for dense.
        weight: ``[B, N]`` / ``[B, k, N]`` (scatter), ``[B, M, N]`` (dense) or ``[B, N, M]``
            (mass); None for gather.
    """
    kind: str
    num_in: int
    num_out: int
    sizes: Tensor
    index: Optional[Tensor] = None
    weight: Optional[Tensor] = None

    def apply(self, x: Tensor) -> Tensor:
        """``Y = W X`` for ``x: [B, N, C]``; returns ``[B, M, C]`` in ``x``'s dtype."""
        check_tensor('x', x, 3, (self.sizes.shape[0], self.num_in, None))
        if self.kind == GATHER:
            return gather_rows(x, self.index)
        if self.kind == SCATTER:
            index = self.index if self.index.dim() == 3 else self.index[:, None]
            return add_rows(x, index, self.weight.to(x.dtype).view_as(index), self.num_out)
        if self.kind == MASS:
            # Dividing the [M, C] product by s costs M C; dividing W first would cost M N.
            summed = torch.bmm(self.weight.to(x.dtype).transpose(1, 2), x)
            return summed / self.sizes[..., None].clamp_min(torch.finfo(self.sizes.dtype).tiny).to(x.dtype)
        return torch.bmm(self.weight.to(x.dtype), x)

    def dense(self) -> Tensor:
        """W as an explicit ``[B, M, N]`` tensor (for inspection, tests and plots)."""
        if self.kind == DENSE:
            return self.weight
        if self.kind == MASS:
            return self.weight.transpose(1, 2) / self.sizes[..., None].clamp_min(
                torch.finfo(self.sizes.dtype).tiny).to(self.weight.dtype)
        batch = self.sizes.shape[0]
        w = self.sizes.new_zeros(batch, self.num_out, self.num_in)
        if self.kind == GATHER:
            return w.scatter_(2, self.index[..., None], 1.0)
        index, weight = self.index, self.weight.to(w.dtype)
        if index.dim() == 2:
            index, weight = index[:, None], weight[:, None]
        return w.scatter_add_(1, index, weight)

    def assignment(self) -> Tensor:
        """``[B, N]``: for each input token, the output row holding most of its weight."""
        if self.kind == SCATTER:
            if self.index.dim() == 2:
                return self.index
            return self.index.gather(1, self.weight.argmax(dim=1, keepdim=True))[:, 0]
        return self.dense().argmax(dim=1)

    def largest_share(self) -> Tensor:
        """``[B, N]``: for each input token, the output row it sends most of its mass to.

        For merging this is its row; for Token Transforming the informative token it is most
        similar to (read off the build, no extra pass); for pruning, :meth:`assignment`.
        """
        if self.kind == MASS or (self.kind == SCATTER and self.index.dim() == 2):
            return self.index
        if self.kind == SCATTER:
            return self.index[:, 0]
        return self.assignment()
