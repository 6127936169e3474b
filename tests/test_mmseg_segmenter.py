"""Segmenter in mmseg with mmtt: strict checkpoints, exactness at ratio 1, tools end to end."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from tiny_seg import (
    REPO,
    TINY_VIT,
    free_port,
    predictions,
    run_tool,
    save_mmseg_checkpoint,
    write_config,
    write_tiny_ade20k,
)

import mmtt  # noqa: F401  (registers the backbone)


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


def test_layers_before_the_first_reduction_run_sdpa_and_equal_mmseg(sdpa_calls):
    torch.manual_seed(0)
    ref = build(dict(TINY_VIT, type='VisionTransformer', out_indices=(0, 3)))
    ours = build(tt_backbone(keep_ratio=0.5, out_indices=(0, 3)))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        early, late = ours(x)
        assert torch.allclose(early, ref(x)[0], atol=1e-5)
    assert len(sdpa_calls) == 2   # layers 0 and 3: layers 1 and 2 reduce (attention with scores)


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
    configs = sorted(REPO.glob('configs/segmenter/*.py'))
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
                       '--out', 'out_double', '--work-dir', 'wd2'], tmp, dict(PORT=free_port()))
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
