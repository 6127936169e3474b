"""A tiny Segmenter, a tiny ADE20K-format data set and a saved checkpoint, for tool tests."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from PIL import Image

import mmtt  # noqa: F401  (registers the backbone)

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = dict(img_size=(64, 64), embed_dims=32, num_layers=4, num_heads=2, drop_path_rate=0.0,
                final_norm=True, with_cls_token=True)


def write_tiny_ade20k(root: Path, count: int = 3) -> None:
    rng = np.random.default_rng(0)
    (root / 'images/validation').mkdir(parents=True)
    (root / 'annotations/validation').mkdir(parents=True)
    for i in range(count):
        h, w = 64 + 16 * i, 96
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / f'images/validation/img_{i}.jpg')
        label = np.zeros((h, w), dtype=np.uint8)
        label[: h // 2] = 3
        label[h // 2:, : w // 2] = 7
        Image.fromarray(label).save(root / f'annotations/validation/img_{i}.png')


def write_config(tmp: Path, name: str, backbone: dict,
                 base: str = str(REPO / 'configs/segmenter_tt_ade20k.py'), header: str = '',
                 replace_backbone: bool = True) -> Path:
    """A tiny Segmenter config over ``base`` that reads the set of :func:`write_tiny_ade20k`.

    ``backbone`` replaces the base's backbone, or with ``replace_backbone=False`` is merged
    into it (as a downstream project's override would be).
    """
    backbone = dict(backbone, _delete_=True) if replace_backbone else backbone
    text = header + f"""
_base_ = ['{base}']
crop = (64, 64)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop),
    backbone={backbone!r},
    decode_head=dict(in_channels=32, channels=32, num_heads=2, embed_dims=32, num_layers=1),
    test_cfg=dict(mode='slide', crop_size=crop, stride=(48, 48)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root='{tmp / "data"}', pipeline=test_pipeline))
val_dataloader = test_dataloader
env_cfg = dict(cudnn_benchmark=False)
"""
    path = tmp / f'{name}.py'
    path.write_text(text)
    return path


def save_mmseg_checkpoint(tmp: Path) -> Path:
    """Random weights of the unmodified mmseg model, saved as an MMEngine Runner would (with a
    message hub holding HistoryBuffer objects and numpy values)."""
    from mmengine.logging import MessageHub
    cfg = Config.fromfile(str(write_config(tmp, 'plain', dict(TINY_VIT, type='VisionTransformer'))))
    torch.manual_seed(0)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    hub = MessageHub.get_instance('mmtt-test')
    hub.update_scalar('train/loss', np.float64(0.5))
    path = tmp / 'segmenter_tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), message_hub=hub.state_dict(),
                    meta=dict(iter=np.int64(160000), dataset_meta=dict(classes=('a', 'b')))), path)
    return path


def free_port() -> str:
    """A TCP port nothing listens on now, for a dist_test.sh run (a fixed one can be taken)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return str(sock.getsockname()[1])


def run_tool(args, tmp, env_extra=None):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', **(env_extra or {}))
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    # A failed distributed run's cause is often in one rank's lines, far from the end of the log.
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if 'Error' in line or 'error:' in line]
    assert proc.returncode == 0, '\n'.join(errors[-20:]) + '\n' + proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = re.findall(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)', proc.stdout + proc.stderr)
    assert metrics, 'no mIoU line printed:\n' + proc.stdout[-2000:] + proc.stderr[-2000:]
    return tuple(map(float, metrics[-1]))


def predictions(folder: Path) -> dict:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob('*.png'))}
