"""Tiny mmpretrain classifiers over the shipped configs, a tiny ImageNet-format set, checkpoints."""
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from PIL import Image

import mmtt  # noqa: F401  (registers the backbones)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs/mmpretrain'
NUM_CLASSES = 10
TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
# Backbone overrides that make each family tiny (img_size 32: 16 patches of 8x8; T2T needs 64;
# PS-ViT: 4x4 points on an 8x8 map, 2 sampling iterations and 4 plain layers).
TINY = {
    'vit': dict(arch=dict(TINY_ARCH, _delete_=True), img_size=32, patch_size=8, init_cfg=None),
    't2t': dict(img_size=64, embed_dims=32, num_layers=4, init_cfg=None, t2t_cfg=dict(token_dims=16),
                layer_cfgs=dict(num_heads=2, feedforward_channels=96)),
    'psvit': dict(img_size=32, embed_dim=32, num_heads=2, depth=6, num_iters=2, stem_channels=(32,),
                  num_point_h=4, num_point_w=4, qk_scale=None),
}


def family(config: Path) -> str:
    if 'ps-vit' in config.name:
        return 'psvit'
    return 't2t' if 't2t' in config.name else 'vit'


def input_size(config: Path) -> int:
    return TINY[family(config)]['img_size']


def write_tiny_imagenet(root: Path, count: int = 4) -> None:
    """ImageNet's layout (``val/*.JPEG`` and ``meta/val.txt``, one ``name label`` per line)."""
    rng = np.random.default_rng(0)
    (root / 'val').mkdir(parents=True)
    (root / 'meta').mkdir()
    lines = []
    for i in range(count):
        name = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
        Image.fromarray(rng.integers(0, 255, (72 + 8 * i, 80, 3), dtype=np.uint8)).save(
            root / 'val' / name, format='JPEG')
        lines.append(f'{name} {i % NUM_CLASSES}')
    (root / 'meta/val.txt').write_text('\n'.join(lines) + '\n')


def tiny_config_text(base: Path, data_root: Optional[Path] = None, backbone: Optional[dict] = None) -> str:
    """A config over the shipped ``base`` with a tiny backbone and head, 3 layers reducing
    (1, 2) of 4, reading the set of :func:`write_tiny_imagenet` if ``data_root`` is given."""
    size = input_size(base)
    backbone = {**TINY[family(base)], 'reduce_layers': (1, 2), **(backbone or {})}
    text = f"""
_base_ = ['{base}']
model = dict(
    backbone={backbone!r},
    head=dict(num_classes={NUM_CLASSES}, in_channels=32, init_cfg=None),
    init_cfg=None,
    train_cfg=None)
data_preprocessor = dict(num_classes={NUM_CLASSES})
"""
    if data_root is not None:
        text += f"""
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale={size + 8}, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size={size}),
    dict(type='PackInputs')]
test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root='{data_root}', split='val', pipeline=test_pipeline))
val_dataloader = test_dataloader
default_hooks = dict(logger=dict(interval=1))
"""
    return text


def write_tiny_config(tmp: Path, base: Path, name: str = 'tiny', **kwargs) -> Path:
    path = tmp / f'{name}.py'
    path.write_text(tiny_config_text(base, **kwargs))
    return path


def build_classifier(config: Path, host: bool = False, **backbone) -> torch.nn.Module:
    """The classifier of ``config`` in eval mode; ``host``: with the unmodified mmpretrain
    backbone (:func:`host_backbone`); ``backbone``: keys replaced."""
    cfg = Config.fromfile(str(config))
    if host:
        cfg.model.backbone = host_backbone(cfg.model.backbone)
    cfg.model.backbone.update(backbone)
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    model.eval()
    return model


def host_backbone(cfg_backbone: dict) -> dict:
    """The unmodified mmpretrain backbone of an mmtt backbone config: its type, no mmtt keys."""
    host = {k: v for k, v in cfg_backbone.items()
            if k not in ('token_transform', 'reduce_layers', 'token_recovery', 'metric')}
    host['type'] = {'TokenVisionTransformer': 'VisionTransformer', 'TokenT2T_ViT': 'T2T_ViT',
                    'TokenDistilledVisionTransformer': 'DistilledVisionTransformer',
                    'TokenPSViT': 'TokenPSViT'}[host['type']]   # mmpretrain has no PS-ViT
    return host


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """``model``'s weights as an MMEngine Runner saves them (with a message hub of HistoryBuffer
    objects and numpy values)."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('mmtt-test-cls')
    hub.update_scalar('train/loss', np.float64(0.5))
    torch.save(dict(state_dict=model.state_dict(), message_hub=hub.state_dict(),
                    meta=dict(epoch=np.int64(300))), path)
    return path
