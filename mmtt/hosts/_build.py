"""Building the registered mmtt modules from a host's config, with every key checked."""
from typing import Mapping, Optional

from mmengine.registry import MODELS
from torch import nn

from ..functional._checks import check_kwargs


def build_module(key: str, cfg: Optional[Mapping]) -> Optional[nn.Module]:
    """``MODELS.build(cfg)``, or None for ``cfg=None``; a key the module does not take raises
    a ``ValueError`` naming ``key`` and it (MMEngine would raise a ``TypeError``)."""
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping) or 'type' not in cfg:
        raise ValueError(f'{key}={cfg!r} must be a config dict with a type')
    cls = MODELS.get(cfg['type']) if isinstance(cfg['type'], str) else cfg['type']
    if isinstance(cls, type):
        check_kwargs(key, {k: v for k, v in cfg.items() if k != 'type'}, cls.__init__)
    return MODELS.build(cfg)
