"""Named Token Transforming settings: what ``preset=`` means in ``TokenTransform`` and ``apply_patch``.

A preset fills in every ``TokenTransform`` option the caller leaves out (an option given
explicitly wins), and names the recovery mode a dense host uses with it. The measured front of
each is in ``docs/benchmarks.md``; ``docs/presets.md`` says which to pick.
"""
from typing import Any, Dict, Mapping, NamedTuple, Optional


class Preset(NamedTuple):
    """One named setting.

    Attributes:
        transform: ``TokenTransform`` options (every option a preset sets).
        recovery: the ``TokenRecovery`` mode used when a host recovers all tokens
            (``apply_patch(..., recover=True)``).
        windows: whether it runs inside Swin's windows (``top_k`` and ``anchor`` do not).
        summary: one line for errors and docs.
    """
    transform: Mapping[str, Any]
    recovery: str
    windows: bool
    summary: str


PRESETS: Dict[str, Preset] = {
    # The paper's method as written (eq. 2-10, Table 6's kappa and tau): the default, and what
    # every config that reproduces one of the paper's tables uses.
    'paper': Preset(
        dict(method='transform', kappa=0.55, tau=150.0, selection='informative', similarity='cosine',
             orphans='spread', top_k=None, score_stride=1, anchor=False, distinct_stride=1),
        recovery='nearest', windows=True,
        summary="the paper's Token Transforming as written (eq. 2-10, kappa 0.55, tau 150)"),
    # The most faithful setting for its wall-clock speed measured on the real ViT-S/14
    # (benchmarks/pareto_vit_s14.sh): informative tokens ranked by eq. 2 plus distinctness,
    # each informative token kept whole, two shares per column of W, and the eq. 2 column sums
    # from every 8th query row, so the attention keeps the fused kernel.
    'fast': Preset(
        dict(method='transform', kappa=0.3, tau=150.0, selection='mixed', similarity='cosine',
             orphans='spread', top_k=2, score_stride=8, anchor=True, distinct_stride=4),
        recovery='share', windows=False,
        summary='Token Transforming at its measured best speed/fidelity trade-off (options beyond the paper)'),
}

# The options a preset sets; TokenTransform's defaults for them are None ("the preset's").
PRESET_KEYS = tuple(PRESETS['paper'].transform)
DEFAULT_PRESET = 'paper'


def check_preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise ValueError(f'unknown preset={preset!r}; choose one of {", ".join(map(repr, PRESETS))}')
    return PRESETS[preset]


def preset_settings(preset: Optional[str], given: Mapping[str, Any]) -> Dict[str, Any]:
    """``given`` (TokenTransform options, None meaning "not given") completed from ``preset``
    (None: the paper's values, for any method).

    Raises:
        ValueError: unknown preset, or a named preset combined with another method.
    """
    settings = dict(check_preset(DEFAULT_PRESET if preset is None else preset).transform)
    method = given.get('method')
    if preset is not None and method is not None and method != settings['method']:
        raise ValueError(f'preset={preset!r} is a Token Transforming setting; it cannot be combined '
                         f'with method={method!r} (leave preset out for other methods)')
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings
