"""The registry-facing token-recovery module (eq. 9-10, and Hourglass's reconstruction)."""
from typing import Optional

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..functional import (
    TokenMatrix,
    compose_recovery_index,
    nearest_recovery_index,
    reconstruction_relation,
    recover_tokens,
)
from ..functional._checks import check_choice, check_tensor, is_int, is_real
from .state import TokenState

RECOVERY_MODES = ('nearest', 'assignment', 'share', 'reconstruct')


@MODELS.register_module()
class TokenRecovery(nn.Module):
    """Maps reduced tokens back to the full token set for dense heads; no parameters.

    A host records one step per reduction (:meth:`index`, or :meth:`relation` for the soft
    mode), composes them (:meth:`compose`, :meth:`compose_relation`), and calls
    :meth:`recover` on the reduced tokens with the forward's state before each dense output.

    Args:
        mode: ``'nearest'`` (eq. 9: each original token takes its L2-nearest reduced token)
            ``'assignment'`` (each original token takes the row of W that holds most of its
            weight) or ``'share'`` (the row it sent most of its mass to: for Token Transforming
            its most similar informative token, read off the build). The last two need no
            distance computation; ``'share'`` is an option beyond the paper whose fidelity
            ``docs/benchmarks.md`` reports. ``'reconstruct'``: Hourglass's token reconstruction layer, soft:
            each original token is rebuilt from its k nearest reduced tokens at the reduction,
            weighted by ``exp(-temperature d^2)`` (:func:`mmtt.functional.reconstruction_relation`),
            so the state carries a ``[B, N, M]`` map instead of an index.
        k, temperature: the ``'reconstruct'`` mode's neighbours and temperature (Expedit's
            Segmenter-L configs: 20 and 0.02); the other modes ignore them.
    """

    def __init__(self, mode: str = 'nearest', k: int = 20, temperature: float = 0.02) -> None:
        super().__init__()
        check_choice('mode', mode, RECOVERY_MODES)
        if not is_int(k) or k < 1:
            raise ValueError(f'k={k!r} must be an int >= 1 (reduced tokens each token is rebuilt from)')
        if not is_real(temperature) or not 0 < float(temperature) < float('inf'):
            raise ValueError(f'temperature={temperature!r} must be a finite number > 0')
        self.mode = mode
        self.k = int(k)
        self.temperature = float(temperature)

    @property
    def soft(self) -> bool:
        """Whether this mode recovers through a soft map (:meth:`relation`) rather than an index."""
        return self.mode == 'reconstruct'

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
        if self.soft:
            raise ValueError("mode='reconstruct' records a soft map: use relation(), not index()")
        if self.mode != 'nearest':
            if matrix is None:
                raise ValueError(f'matrix is required for mode={self.mode!r}')
            rest = matrix.assignment() if self.mode == 'assignment' else matrix.largest_share()
        else:
            rest = nearest_recovery_index(x[:, num_prefix:], y[:, num_prefix:])
        prefix = torch.arange(num_prefix, device=x.device).expand(x.shape[0], -1)
        return torch.cat([prefix, rest + num_prefix], dim=1)

    def relation(self, x: Tensor, y: Tensor, num_prefix: int = 0) -> Tensor:
        """Soft recovery map of one reduction (mode ``'reconstruct'``): ``[B, P + N, P + M]``,
        the prefix tokens mapping to themselves.

        Args:
            x: tokens before the reduction, ``[B, P + N, C]``.
            y: tokens after it, ``[B, P + M, C]``.
            num_prefix: P.
        """
        check_tensor('x', x, 3)
        check_tensor('y', y, 3, (x.shape[0], None, x.shape[2]))
        rest = reconstruction_relation(x[:, num_prefix:], y[:, num_prefix:], self.k, self.temperature)
        batch, n, m = rest.shape
        out = rest.new_zeros(batch, num_prefix + n, num_prefix + m)
        out[:, num_prefix:, num_prefix:] = rest
        prefix = torch.arange(num_prefix, device=x.device)
        out[:, prefix, prefix] = 1.0
        return out

    @staticmethod
    def compose(first: Optional[Tensor], second: Tensor) -> Tensor:
        """Index over two reductions in a row; ``first=None`` means no earlier reduction."""
        return second if first is None else compose_recovery_index(first, second)

    @staticmethod
    def compose_relation(first: Optional[Tensor], second: Tensor) -> Tensor:
        """Soft map over two reductions in a row (``[B, N0, N1] @ [B, N1, N2]``); ``first=None``
        means no earlier reduction."""
        if first is None:
            return second
        check_tensor('second', second, 3, (first.shape[0], first.shape[2], None))
        return torch.bmm(first, second.to(first.dtype))

    def recover(self, tokens: Tensor, state: TokenState) -> Tensor:
        """``tokens: [B, P + M, C]`` back to every original token, by the forward's
        :class:`~mmtt.modules.state.TokenState` (its relation in the soft mode, else its index);
        unchanged when nothing was reduced."""
        if not self.soft:
            return self(tokens, state.index)
        if state.relation is None:
            return tokens
        check_tensor('tokens', tokens, 3, (state.relation.shape[0], state.relation.shape[2], None))
        return torch.bmm(state.relation.to(tokens.dtype), tokens)

    def forward(self, tokens: Tensor, index: Optional[Tensor]) -> Tensor:
        """Eq. 10; ``index=None`` (nothing was reduced) returns ``tokens`` unchanged.

        The soft mode has no index: a host calling this instead of :meth:`recover` is told so
        (rather than getting the reduced tokens back)."""
        if self.soft:
            raise ValueError("mode='reconstruct' rebuilds tokens from the state's soft map: call "
                             'recover(tokens, state); this host passes only an index')
        return tokens if index is None else recover_tokens(tokens, index)

    def extra_repr(self) -> str:
        soft = f', k={self.k}, temperature={self.temperature}' if self.soft else ''
        return f'mode={self.mode!r}{soft}'
