"""Argument checks shared by the functional API: every message names the bad argument."""
import inspect
import numbers
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

# tau multiplies similarities in [-1, 1] in float32 (at least): near float32's largest value
# (3.4e38) tau * similarity is inf (a cosine can exceed 1 by rounding) and the max-shifted
# softmax gives inf - inf = NaN. 1e38 leaves that margin.
TAU_MAX = 1e38


def is_real(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An integer (``int`` or a numpy integer), not a bool and not a float such as 1.7."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
    if not is_real(kappa) or not -1.0 <= float(kappa) <= 1.0:
        raise ValueError(f'kappa={kappa!r} must be a number in [-1, 1] (it gates a cosine similarity)')


def check_tau(tau: float) -> None:
    if not is_real(tau) or not 0 < float(tau) <= TAU_MAX:
        raise ValueError(f'tau={tau!r} must be a finite number > 0 and at most {TAU_MAX:g} '
                         '(softmax temperature; a larger tau overflows tau * similarity in float32)')


def check_keep_ratio(keep_ratio: float) -> None:
    if not is_real(keep_ratio) or not 0 < float(keep_ratio) <= 1:
        raise ValueError(f'keep_ratio={keep_ratio!r} must be a number in (0, 1]')


def check_floating(name: str, t: Tensor) -> None:
    """Token features must be floating point: W applied to an integer tensor truncates to 0."""
    if not t.is_floating_point():
        raise ValueError(f'{name} has dtype {t.dtype}; token features must be a floating-point '
                         'tensor (an integer one would be truncated when W is applied)')


def check_positive_sizes(sizes: Tensor) -> None:
    """``sizes`` (numbers of original tokens) must all be finite and > 0.

    A sync on a GPU (it reads the values), so only for sizes given from outside: the sizes of
    an earlier reduction are valid by construction.
    """
    bad = ~(sizes > 0) | ~torch.isfinite(sizes)   # NaN fails both comparisons
    if bool(bad.any()):
        first = sizes[bad][0].item()
        raise ValueError(f'sizes must be finite and > 0 (each counts original tokens), got '
                         f'{int(bad.sum())} bad value(s), e.g. {first!r}')


def check_layers(name: str, layers: Any) -> List[int]:
    """``layers`` as sorted unique block indices (the caller checks their range).

    It must be a sequence of ints: a float such as 1.7 is not truncated, and a single int is
    refused, since it could mean one block or a number of blocks.
    """
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        hint = f', e.g. ({layers!r},) for one block' if is_int(layers) else ''
        raise ValueError(f'{name}={layers!r} must be a sequence of 0-based block indices{hint}')
    layers = list(layers)
    not_ints = [i for i in layers if not is_int(i)]
    if not_ints:
        raise ValueError(f'{name}={layers!r} must hold ints (0-based block indices), got '
                         f'{not_ints[0]!r}')
    return sorted(set(int(i) for i in layers))


def check_kwargs(owner: str, kwargs: Mapping[str, Any], target: Any) -> None:
    """Raise ``ValueError`` naming the first key of ``kwargs`` that ``target`` (a class or
    function) does not take; a target with ``**kwargs`` takes anything."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if n != 'self' and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        key = unknown[0]
        raise ValueError(f'unknown {owner} key {key}={kwargs[key]!r}; '
                         f'{getattr(target, "__name__", target)} takes {", ".join(known)}')


def check_top_k(top_k: int) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f'top_k={top_k!r} must be None or an int >= 1 (non-zeros kept per column of W)')


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f'unknown {name}={value!r}; choose one of {", ".join(map(repr, choices))}')


def check_score_stride(stride: int) -> None:
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f'score_stride={stride!r} must be an int >= 1 (1: every query row, the paper\'s eq. 2)')


def check_distinct_stride(stride: int) -> None:
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f'distinct_stride={stride!r} must be an int >= 1 (1: every other token, '
                         'the exact distinctness)')
