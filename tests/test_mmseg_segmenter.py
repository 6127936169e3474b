"""Segmenter in mmseg with mmtt: strict checkpoints, exactness at ratio 1, tools end to end."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

import mmtt  # noqa: F401  (registers the backbone)
from mmseg.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = dict(img_size=(64, 64), embed_dims=32, num_layers=4, num_heads=2, drop_path_rate=0.0,
                final_norm=True, with_cls_token=True)


def build(cfg):
    init_default_scope('mmseg')
    model = MODELS.build(cfg)
    model.eval()
    return model


def tt_backbone(keep_ratio=0.7, method='transform', **kw):
    return dict(TINY_VIT, type='TokenVisionTransformer', reduce_layers=(1, 2),
                token_transform=dict(type='TokenTransform', keep_ratio=keep_ratio, method=method),
                token_recovery=dict(type='TokenRecovery'), **kw)


def test_mmseg_vit_state_dict_loads_strictly_and_ratio_one_is_exact():
    torch.manual_seed(0)
    ref = build(dict(TINY_VIT, type='VisionTransformer', out_indices=(1, 3)))
    ours = build(tt_backbone(keep_ratio=1.0, out_indices=(1, 3)))
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 80, 112)   # not the configured img_size, batch > 1
    with torch.no_grad():
        for a, b in zip(ref(x), ours(x)):
            assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('method', ['transform', 'tome', 'evit', 'prune'])
def test_reduced_backbone_outputs_the_full_grid(method):
    torch.manual_seed(0)
    ours = build(tt_backbone(method=method, out_indices=(0, 1, 3)))
    with torch.no_grad():
        outs = ours(torch.randn(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 6, 4)] * 3
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('override,needle', [
    (dict(reduce_layers=(1, 4)), 'reduce_layers=[4] out of range for num_layers=4'),
    (dict(token_transform=dict(type='TokenTransform', keep_ratio=0.0)), 'keep_ratio=0.0'),
    (dict(token_recovery=None), 'token_recovery is required'),
    (dict(token_transform=None), 'token_transform is None'),
])
def test_bad_backbone_config_fails_at_build_naming_the_key(override, needle):
    with pytest.raises(ValueError) as info:
        build(dict(tt_backbone(), **override))
    assert needle in str(info.value)


def test_every_shipped_segmenter_config_builds_with_tiny_overrides():
    configs = sorted(REPO.glob('configs/segmenter*.py')) + sorted(REPO.glob('configs/segmenter/*.py'))
    assert len(configs) >= 16
    for path in configs:
        cfg = Config.fromfile(str(path))
        cfg.model.pretrained = None
        cfg.model.backbone.update(TINY_VIT)
        cfg.model.backbone.reduce_layers = [1, 2]
        cfg.model.decode_head.update(in_channels=32, channels=32, num_heads=2, embed_dims=32)
        model = build(cfg.model)
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
        assert logits.shape[1] == cfg.model.decode_head.num_classes, path.name


# ---- end to end through tools/test.py and tools/dist_test.sh on a tiny ADE20K-format set ----

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


def write_config(tmp: Path, name: str, backbone: dict) -> Path:
    text = f"""
_base_ = ['{REPO}/configs/segmenter_tt_ade20k.py']
crop = (64, 64)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop),
    backbone=dict(_delete_=True, **{backbone!r}),
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
    model = build(cfg.model)
    hub = MessageHub.get_instance('mmtt-test')
    hub.update_scalar('train/loss', np.float64(0.5))
    path = tmp / 'segmenter_tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), message_hub=hub.state_dict(),
                    meta=dict(iter=np.int64(160000), dataset_meta=dict(classes=('a', 'b')))), path)
    return path


def run_tool(args, tmp, env_extra=None):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', **(env_extra or {}))
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = re.findall(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)', proc.stdout + proc.stderr)
    assert metrics, 'no mIoU line printed:\n' + proc.stdout[-2000:] + proc.stderr[-2000:]
    return tuple(map(float, metrics[-1]))


def predictions(folder: Path) -> dict:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob('*.png'))}


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('seg')
    write_tiny_ade20k(tmp / 'data')
    return tmp, save_mmseg_checkpoint(tmp)


def test_tools_test_keep_one_equals_unmodified_mmseg(tiny_setup):
    tmp, ckpt = tiny_setup
    plain = write_config(tmp, 'plain', dict(TINY_VIT, type='VisionTransformer'))
    keep1 = write_config(tmp, 'keep1', tt_backbone(keep_ratio=1.0))
    test_py = str(REPO / 'tools/test.py')
    m_plain = run_tool([sys.executable, test_py, str(plain), str(ckpt), '--out', 'out_plain'], tmp)
    m_keep1 = run_tool([sys.executable, test_py, str(keep1), str(ckpt), '--out', 'out_keep1'], tmp)
    assert m_plain == m_keep1
    a, b = predictions(tmp / 'out_plain'), predictions(tmp / 'out_keep1')
    assert len(a) == 3 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_dist_test_on_two_cpu_processes_matches_one(tiny_setup):
    tmp, ckpt = tiny_setup
    reduced = write_config(tmp, 'reduced', tt_backbone(keep_ratio=0.6))
    single = run_tool([sys.executable, str(REPO / 'tools/test.py'), str(reduced), str(ckpt),
                       '--out', 'out_single', '--work-dir', 'wd1'], tmp)
    assert 0 <= single[1] <= 100
    double = run_tool(['bash', str(REPO / 'tools/dist_test.sh'), str(reduced), str(ckpt), '2',
                       '--out', 'out_double', '--work-dir', 'wd2'], tmp, dict(PORT='29517'))
    assert single == double
    a, b = predictions(tmp / 'out_single'), predictions(tmp / 'out_double')
    assert len(a) == 3 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_tools_train_fine_tunes_the_reduced_model(tiny_setup):
    tmp, _ = tiny_setup
    cfg = write_config(tmp, 'train', tt_backbone(keep_ratio=0.6))
    with open(cfg, 'a') as f:
        f.write("""
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop),
    dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=test_dataloader['dataset']['data_root'], pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
""")
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, str(REPO / 'tools/train.py'), str(cfg), '--work-dir', 'wd_train'],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [float(v) for v in re.findall(r'loss: ([\d.]+)', proc.stdout + proc.stderr)]
    assert len(losses) >= 2 and all(np.isfinite(losses))
    assert (tmp / 'wd_train/iter_2.pth').exists()
