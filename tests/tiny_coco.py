"""A tiny DINO with a tiny (Token) Swin, a tiny COCO-format set and a saved checkpoint."""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

import mmtt  # noqa: F401
import mmtt.hosts.mmdet  # noqa: F401  (registers TokenSwinTransformer)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ('cat', 'dog')
# Window 7 reduced to 5: exact shift correspondence needs even sizes, so odd ones test the rest.
TINY_SWIN = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
                 drop_path_rate=0.0, init_cfg=None, convert_weights=False)
TINY_TT = dict(reduce_layers=[1, 2, 4], reduced_window_size=5,
               token_transform=dict(type='TokenTransform', method='transform', kappa=0.55, tau=150.0),
               token_recovery=dict(type='TokenRecovery'))
# DINO with one or two small layers. Its width stays 256: mmdet's DINO decoder hard-codes a
# 128-feature sine embedding of the 4 box coordinates, which must be 2 * embed_dims wide.
TINY_DINO = dict(
    num_queries=30,
    neck=dict(in_channels=[32, 64, 128, 256]),
    encoder=dict(num_layers=1, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256))),
    bbox_head=dict(num_classes=len(CLASSES)),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=30))


def tiny_dino(cfg: Config, backbone: dict) -> Config:
    """``cfg`` with :data:`TINY_DINO` merged in and its backbone replaced by ``backbone``."""
    cfg.model.backbone = Config(backbone)
    cfg.merge_from_dict(dict(model=TINY_DINO))
    return cfg


def write_tiny_coco(root: Path, count: int = 4) -> None:
    """``count`` random images of different sizes and an instances JSON with 1-3 boxes each."""
    rng = np.random.default_rng(0)
    (root / 'val').mkdir(parents=True)
    (root / 'annotations').mkdir()
    images, annotations = [], []
    for i in range(count):
        h, w = 90 + 14 * i, 120 - 6 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f'val/{i}.jpg')
        images.append(dict(id=i + 1, file_name=f'{i}.jpg', height=h, width=w))
        for k in range(1 + i % 3):
            x0, y0 = float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2))
            bw, bh = float(rng.integers(10, w // 2)), float(rng.integers(10, h // 2))
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=1 + k % 2,
                                    bbox=[x0, y0, bw, bh], area=bw * bh, iscrowd=0))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    (root / 'annotations/instances_val.json').write_text(
        json.dumps(dict(images=images, annotations=annotations, categories=categories)))


def write_config(tmp: Path, name: str, backbone: dict,
                 base: str = str(REPO / 'configs/dino/dino_tt_swin-l_coco.py')) -> Path:
    """A tiny DINO config over ``base`` that evaluates the set of :func:`write_tiny_coco`."""
    data = tmp / 'data'
    text = f"""
_base_ = ['{base}']
# The explicit module import keeps this working whether or not `import mmtt` registers it.
custom_imports = dict(imports=['mmtt', 'mmtt.hosts.mmdet'], allow_failed_imports=False)
model = {dict(TINY_DINO, backbone=dict(backbone, _delete_=True))!r}
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 120), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor'))]
test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    data_root='{data}/', ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
    metainfo=dict(classes={CLASSES!r}), pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(ann_file='{data}/annotations/instances_val.json')
val_evaluator = test_evaluator
default_hooks = dict(logger=dict(interval=1))
env_cfg = dict(cudnn_benchmark=False)
"""
    path = tmp / f'{name}.py'
    path.write_text(text)
    return path


def save_dino_checkpoint(tmp: Path) -> Path:
    """Random weights of the tiny DINO with mmdet's own Swin, as a plain state-dict file."""
    cfg = Config.fromfile(str(write_config(tmp, 'plain', dict(TINY_SWIN, type='SwinTransformer'))))
    torch.manual_seed(0)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    # DINO creates some parameters with torch.empty and fills them only in init_weights:
    # without it the checkpoint can hold garbage, and then NaN predictions.
    model.init_weights()
    path = tmp / 'dino_tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=CLASSES))), path)
    return path


def run_test_tool(tmp: Path, config: Path, checkpoint: Path, out: str) -> float:
    """``tools/test.py CONFIG CKPT --out OUT.pkl`` in a subprocess; returns ``coco/bbox_mAP``."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, str(REPO / 'tools/test.py'), str(config), str(checkpoint),
                           '--out', out, '--work-dir', f'wd_{config.stem}'],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    found = re.findall(r'coco/bbox_mAP: (-?[\d.]+)', log)
    assert found, 'no coco/bbox_mAP printed:\n' + log[-3000:]
    return float(found[-1])


def load_results(path: Path) -> list:
    with open(path, 'rb') as f:
        return pickle.load(f)
