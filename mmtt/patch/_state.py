"""Per-forward token bookkeeping shared by the patched blocks of one model."""
from typing import Optional

from torch import Tensor

from ..modules import TokenRecovery, TokenTransform


class TokenState:
    """Sizes of the current tokens and, when recovery is on, the composed recovery index.

    One instance per patched model; the model resets it at the start of every forward, so
    an interrupted or re-entered forward cannot leave stale state behind.
    """

    def __init__(self, num_prefix: int, recovery: Optional[TokenRecovery]) -> None:
        self.num_prefix = num_prefix
        self.recovery = recovery
        self.reset()

    def reset(self) -> None:
        self.sizes: Optional[Tensor] = None
        self.index: Optional[Tensor] = None

    def reduce(self, x: Tensor, transform: TokenTransform, scores: Optional[Tensor] = None,
               metric: Optional[Tensor] = None) -> Tensor:
        """Apply ``transform`` to ``x`` and update sizes and the recovery index."""
        out = transform(x, self.sizes, num_prefix=self.num_prefix, scores=scores, metric=metric,
                        validate_sizes=False)   # this state's sizes come from its own reductions
        if out.matrix is None:
            return x
        if self.recovery is not None:
            step = self.recovery.index(x, out.tokens, self.num_prefix, out.matrix)
            self.index = self.recovery.compose(self.index, step)
        self.sizes = out.sizes
        return out.tokens

    def recover(self, x: Tensor) -> Tensor:
        """Full-length tokens (eq. 10); ``x`` unchanged when nothing was reduced."""
        return self.recovery(x, self.index)

    def weighted_mean(self, x: Tensor) -> Tensor:
        """Mean of the non-prefix tokens, each counted ``size`` times: ``[B, C]``."""
        tokens = x[:, self.num_prefix:]
        if self.sizes is None:
            return tokens.mean(dim=1)
        weights = self.sizes[:, self.num_prefix:, None].to(x.dtype)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1)
