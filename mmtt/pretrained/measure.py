"""Fidelity metrics against an unmodified model, and a recorder of what reductions did.

Used by ``tools/fidelity.py``, ``tools/visualize.py`` and ``tools/demo.py``. The recorder works
with any timm model patched by :func:`mmtt.hosts.timm.apply_patch`.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import Reduction


def mask_iou(pred: Tensor, ref: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU of the masks ``pred > threshold`` and ``ref > threshold``, per image.

    Args:
        pred, ref: ``[B, ...]`` maps in [0, 1].

    Returns:
        ``[B]``; 1 where both masks are empty (they agree).
    """
    if pred.shape != ref.shape:
        raise ValueError(f'pred {tuple(pred.shape)} and ref {tuple(ref.shape)} must have the same shape')
    a, b = (pred > threshold).flatten(1), (ref > threshold).flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def mean_abs_error(pred: Tensor, ref: Tensor) -> Tensor:
    """Mean absolute difference per image: ``[B]``."""
    if pred.shape != ref.shape:
        raise ValueError(f'pred {tuple(pred.shape)} and ref {tuple(ref.shape)} must have the same shape')
    return (pred.double() - ref.double()).abs().flatten(1).mean(1)


def token_cosine(tokens: Tensor, ref: Tensor) -> Tensor:
    """Cosine similarity of corresponding tokens, ``[B, N, C]`` each -> ``[B, N]``."""
    if tokens.shape != ref.shape:
        raise ValueError(f'tokens {tuple(tokens.shape)} and ref {tuple(ref.shape)} must have the same '
                         'shape; recovered tokens need apply_patch(..., recover=True)')
    # Clamped: rounding can put the cosine of identical tokens a few ulps above 1.
    return F.cosine_similarity(tokens.double(), ref.double(), dim=-1).clamp(-1, 1)


@dataclass
class ReductionRecord:
    """One reduction seen during a forward.

    Attributes:
        layer: index of the block that reduced.
        num_prefix: prefix tokens, never reduced.
        sizes: ``[B, P + N]`` sizes of the input tokens, or None (all 1: a first reduction).
        scores: ``[B, P + N]`` attention scores the transform received, or None.
        reduction: what :class:`mmtt.TokenTransform` returned (``matrix`` is W over the N
            non-prefix tokens).
    """
    layer: int
    num_prefix: int
    sizes: Optional[Tensor]
    scores: Optional[Tensor]
    reduction: Reduction

    def kept_index(self) -> Tensor:
        """``[B, M]``: the input token (non-prefix index) each row of W was built around.

        For Token Transforming and pruning these are the informative tokens, in row order
        (top-M scores, as the builders select them); without scores, each row's largest entry.
        """
        matrix = self.reduction.matrix
        if self.scores is not None:
            return self.scores[:, self.num_prefix:].topk(matrix.num_out, dim=1).indices
        return matrix.dense().argmax(dim=2)


@contextmanager
def record_reductions(model: nn.Module) -> Iterator[List[ReductionRecord]]:
    """Record every reduction of a patched timm model while the context is open.

    Yields a list that fills with one :class:`ReductionRecord` per reduction, in forward order.
    """
    blocks = [(i, b) for i, b in enumerate(getattr(model, 'blocks', []))
              if getattr(b, 'token_transform', None) is not None]
    if not blocks:
        raise ValueError('model has no reductions: patch it with mmtt.hosts.timm.apply_patch first')
    records: List[ReductionRecord] = []
    handles = []
    for layer, block in blocks:
        def hook(module, args, kwargs, output, layer=layer):
            if output.matrix is not None:
                sizes = args[1] if len(args) > 1 else kwargs.get('sizes')
                records.append(ReductionRecord(layer, kwargs.get('num_prefix', 0), sizes,
                                               kwargs.get('scores'), output))
        handles.append(block.token_transform.register_forward_hook(hook, with_kwargs=True))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def column_shares(record: ReductionRecord) -> Tensor:
    """``[B, M, N]``: the share of input token j that goes to output token i (columns sum to 1
    for transforming and merging; pruning drops columns).

    W's rows are normalised (``W_ij = m_ij sizes_j / s_i``, eq. 6 and 8), so a row of W says
    how an output token is made; the share ``m_ij = W_ij s_i / sizes_j`` says where an input
    token goes, which is what "one token feeds several informative tokens" is about.
    """
    matrix = record.reduction.matrix
    shares = matrix.dense().double() * matrix.sizes.double()[..., None]
    if record.sizes is not None:
        shares = shares / record.sizes[:, None, record.num_prefix:].double()
    return shares
