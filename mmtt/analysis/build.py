"""A config's model built for analysis (FLOP counting, benchmarks), unmodified or with mmtt.

The unmodified model is the same config with ``model.backbone.reduce_layers=[]`` (mmtt's
backbones are then their host's model exactly).
"""
import copy
from typing import Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from .flops import FlopReport, count_flops
from .forward import tensor_forward

__all__ = ['unmodified', 'build_model', 'config_flops', 'detection_test_shape', 'default_shape']


def unmodified(cfg: Config) -> Config:
    """A copy of ``cfg`` whose backbone reduces nothing."""
    plain = copy.deepcopy(cfg)
    plain.model.backbone.reduce_layers = []
    return plain


def build_model(cfg: Config) -> nn.Module:
    """``cfg.model`` built in the config's default scope, in eval mode."""
    from mmengine.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(copy.deepcopy(cfg.model))   # DINO edits its config in place
    model.eval()
    return model


def config_flops(cfg: Config, shape: Tuple[int, int], part: str = 'model') -> FlopReport:
    """FLOPs of one ``[1, 3, H, W]`` input through the whole model or its backbone."""
    model = build_model(cfg)
    net = model.backbone if part == 'backbone' else tensor_forward(model)
    return count_flops(net, (torch.randn(1, 3, *shape),))


def detection_test_shape(cfg) -> Optional[Tuple[int, int]]:
    """``(H, W)`` that an mmdet config's test ``Resize`` gives a landscape image, e.g.
    (800, 1333) for COCO's ``scale=(1333, 800)``; None for other configs (mmseg ones keep
    their crop size) or without such a step."""
    if cfg.get('default_scope') != 'mmdet':
        return None
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline', [])
    for step in pipeline:
        if step.get('type') == 'Resize' and step.get('scale') is not None:
            return int(min(step['scale'])), int(max(step['scale']))
    return None


def default_shape(cfg: Config) -> Tuple[int, int]:
    """The test crop size, else the detection test size, else 512x512."""
    crop = cfg.model.get('test_cfg', {}).get('crop_size')
    return tuple(crop) if crop else detection_test_shape(cfg) or (512, 512)
