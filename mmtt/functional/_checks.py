"""Argument checks shared by the functional API: every message names the bad argument."""
from typing import Optional, Sequence

from torch import Tensor


def check_tensor(name: str, t: Tensor, rank: int, shape: Optional[Sequence[Optional[int]]] = None) -> None:
    """Raise ``ValueError`` unless ``t`` has ``rank`` dims and matches ``shape`` (None = any)."""
    if not isinstance(t, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dim() != rank:
        raise ValueError(f'{name} must have {rank} dims, got shape {tuple(t.shape)}')
    if shape is not None:
        for dim, (got, want) in enumerate(zip(t.shape, shape)):
            if want is not None and got != want:
                raise ValueError(f'{name} has size {got} in dim {dim}, expected {want} '
                                 f'(shape {tuple(t.shape)})')


def check_num_keep(num_keep: int, num_tokens: int, minimum: int = 1) -> None:
    if not isinstance(num_keep, int) or isinstance(num_keep, bool):
        raise ValueError(f'num_keep must be an int, got {num_keep!r}')
    if not minimum <= num_keep <= num_tokens:
        raise ValueError(f'num_keep={num_keep} must be in [{minimum}, {num_tokens}] '
                         f'(the number of reducible tokens is {num_tokens})')


def check_kappa(kappa: float) -> None:
    if not -1.0 <= float(kappa) <= 1.0:
        raise ValueError(f'kappa={kappa!r} must be in [-1, 1] (it gates a cosine similarity)')


def check_tau(tau: float) -> None:
    if not float(tau) > 0:
        raise ValueError(f'tau={tau!r} must be > 0 (softmax temperature)')


def check_top_k(top_k: int) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f'top_k={top_k!r} must be None or an int >= 1 (non-zeros kept per column of W)')


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f'unknown {name}={value!r}; choose one of {", ".join(map(repr, choices))}')
