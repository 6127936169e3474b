"""The registry-facing token-recovery module (eq. 9-10)."""
from typing import Optional

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..functional import TokenMatrix, compose_recovery_index, nearest_recovery_index, recover_tokens
from ..functional._checks import check_choice, check_tensor

RECOVERY_MODES = ('nearest', 'assignment', 'share')


@MODELS.register_module()
class TokenRecovery(nn.Module):
    """Maps reduced tokens back to the full token set for dense heads; no parameters.

    A host records one index per reduction with :meth:`index`, composes them with
    :meth:`compose`, and calls the module on the reduced tokens before each dense output.

    Args:
        mode: ``'nearest'`` (eq. 9: each original token takes its L2-nearest reduced token)
            ``'assignment'`` (each original token takes the row of W that holds most of its
            weight) or ``'share'`` (the row it sent most of its mass to: for Token Transforming
            its most similar informative token, read off the build). The last two need no
            distance computation; ``'share'`` is an option beyond the paper whose fidelity the
            README reports.
    """

    def __init__(self, mode: str = 'nearest') -> None:
        super().__init__()
        check_choice('mode', mode, RECOVERY_MODES)
        self.mode = mode

    def index(self, x: Tensor, y: Tensor, num_prefix: int = 0,
              matrix: Optional[TokenMatrix] = None) -> Tensor:
        """Recovery index of one reduction: ``[B, N]`` into the ``P + M`` reduced tokens.

        Args:
            x: tokens before the reduction, ``[B, P + N', C]``.
            y: tokens after it, ``[B, P + M, C]``.
            num_prefix: P, prefix tokens, which map to themselves.
            matrix: the reduction's :class:`TokenMatrix` (needed for ``'assignment'``).
        """
        check_tensor('x', x, 3)
        check_tensor('y', y, 3, (x.shape[0], None, x.shape[2]))
        if self.mode != 'nearest':
            if matrix is None:
                raise ValueError(f'matrix is required for mode={self.mode!r}')
            rest = matrix.assignment() if self.mode == 'assignment' else matrix.largest_share()
        else:
            rest = nearest_recovery_index(x[:, num_prefix:], y[:, num_prefix:])
        prefix = torch.arange(num_prefix, device=x.device).expand(x.shape[0], -1)
        return torch.cat([prefix, rest + num_prefix], dim=1)

    @staticmethod
    def compose(first: Optional[Tensor], second: Tensor) -> Tensor:
        """Index over two reductions in a row; ``first=None`` means no earlier reduction."""
        return second if first is None else compose_recovery_index(first, second)

    def forward(self, tokens: Tensor, index: Optional[Tensor]) -> Tensor:
        """Eq. 10; ``index=None`` (nothing was reduced) returns ``tokens`` unchanged."""
        return tokens if index is None else recover_tokens(tokens, index)

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}'
