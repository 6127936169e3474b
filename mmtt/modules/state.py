"""The per-forward token state: a value handed from block to block with the tokens.

State flows with the data. A forward starts from ``TokenState()``, each reducing block returns
a new one beside its tokens, and the model hands it to the next block: nothing about a forward
is written on a module, so one model serves concurrent threads, and a block recomputed by
``torch.utils.checkpoint`` sees the same state it saw the first time.
"""
from typing import NamedTuple, Optional, Tuple

from torch import Tensor


class TokenState(NamedTuple):
    """Token bookkeeping of one forward.

    Attributes:
        sizes: ``[B, P + M]`` sizes of the current tokens (eq. 8), None before any reduction.
        index: ``[B, P + N]`` recovery index of every original token into the current ones
            (eq. 9, composed over reductions), None before any reduction or without recovery
            (or with the soft recovery mode).
        relation: ``[B, P + N, P + M]`` soft recovery map of the ``'reconstruct'`` mode
            (original token n is ``sum_m relation[n, m]`` times current token m, composed over
            reductions), None otherwise.
        grid: ``(h, w)`` of the current non-prefix tokens while they form a grid (the patch
            grid until the first reduction; a clustering method's centre grid after it), else
            None. The host sets it at the start of a forward; methods that cluster in space
            (Hourglass) need it.
    """
    sizes: Optional[Tensor] = None
    index: Optional[Tensor] = None
    relation: Optional[Tensor] = None
    grid: Optional[Tuple[int, int]] = None


class StateStep:
    """One block's step of the forward's :class:`TokenState`: ``state`` before the block, which
    the block reads, and ``next`` after it, which the block sets. A patched block then returns
    its tokens alone, as the host's block does (a user's forward hook on a block sees a tensor),
    while the state still travels with the forward and never sits on a module. The model's
    loop makes one per block; since the block never overwrites ``state``, a checkpointed block
    recomputes from the state it first saw."""

    def __init__(self, state: TokenState = TokenState()) -> None:
        self.state = state
        self.next = state
