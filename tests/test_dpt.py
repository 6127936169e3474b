"""DPT-Hybrid depth on NYUv2 with mmtt: official weights, exactness at ratio 1, configs,
losses, the Table 3 metric, and tools/test.py + dist_test.sh end to end."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.evaluation.metrics import DepthMetric
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from tiny_nyu import (
    METRICS,
    REPO,
    TINY_BACKBONE,
    TINY_HEAD,
    OfficialDPTHybrid,
    build_tiny,
    depth_pngs,
    run_tool,
    tiny_official,
    write_config,
    write_tiny_nyu,
)
from tiny_seg import free_port

import mmtt.models  # noqa: F401  (registers the DPT modules in mmseg)
from mmtt.analysis import count_flops
from mmtt.models.dpt import (
    BTSDepthMetric,
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    convert_dpt_key,
    convert_dpt_state_dict,
)
from mmtt.tools import convert_dpt_checkpoint


def tt(keep_ratio=0.6, method='transform', layers=(1, 2)):
    return dict(reduce_layers=layers, token_recovery=dict(type='TokenRecovery'),
                token_transform=dict(type='TokenTransform', keep_ratio=keep_ratio, method=method))


def official_state(seed=0):
    torch.manual_seed(seed)
    ref = tiny_official().eval()
    ref.scratch.output_conv[4].bias.data.fill_(1.0)   # so that the depth maps vary
    return ref


def test_converted_official_weights_reproduce_official_dpt_and_ratio_one_is_exact():
    ref = official_state()
    converted = convert_dpt_state_dict(ref.state_dict())
    plain, keep1 = build_tiny(), build_tiny(backbone=tt(keep_ratio=1.0))
    plain.load_state_dict(converted, strict=True)
    keep1.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 96)   # not the position grid's size: resized as DPT does
    with torch.no_grad():
        expected = ref(x)
        ours, ours_keep1 = plain(x, mode='tensor'), keep1(x, mode='tensor')
    assert expected.std() > 1e-2
    assert ours.shape == (2, 1, 64, 96)
    assert torch.allclose(ours[:, 0], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours, ours_keep1)


def test_converter_maps_the_full_size_official_layout_strictly():
    with torch.device('meta'):   # names and shapes only: no memory, no time
        official = OfficialDPTHybrid().state_dict()
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(str(REPO / 'configs/dpt/dpt_tt_nyu.py')).model)
    shapes = {k: tuple(v.shape) for k, v in official.items()}
    # Keys and shapes of isl-org/DPT's dpt_hybrid_nyu-2ce69ec7.pt.
    assert shapes['pretrained.model.patch_embed.backbone.stem.conv.weight'] == (64, 3, 7, 7)
    assert shapes['pretrained.model.patch_embed.backbone.stages.2.blocks.8.conv3.weight'] == \
        (1024, 256, 1, 1)
    assert shapes['pretrained.model.patch_embed.proj.weight'] == (768, 1024, 1, 1)
    assert shapes['pretrained.model.pos_embed'] == (1, 577, 768)
    assert shapes['pretrained.model.blocks.11.attn.qkv.weight'] == (2304, 768)
    assert shapes['pretrained.act_postprocess3.0.project.0.weight'] == (768, 1536)
    assert shapes['pretrained.act_postprocess4.4.weight'] == (768, 768, 3, 3)
    assert shapes['scratch.layer2_rn.weight'] == (256, 512, 3, 3)
    assert shapes['scratch.refinenet4.resConfUnit1.conv1.weight'] == (256, 256, 3, 3)
    assert shapes['scratch.output_conv.4.weight'] == (1, 32, 1, 1)
    assert not any(k.startswith(('pretrained.act_postprocess1', 'pretrained.act_postprocess2'))
                   for k in official)
    converted = convert_dpt_state_dict(official)
    wrong = dict(converted)
    wrong['decode_head.convs.1.weight'] = torch.empty(256, 256, 3, 3, device='meta')
    with pytest.raises(RuntimeError, match='size mismatch'):
        model.load_state_dict(wrong, strict=True, assign=True)
    model.load_state_dict(converted, strict=True, assign=True)   # shapes are checked first
    assert len(converted) == len(official) - 4 - 4   # final norm + classifier, unused unit
    # DPT's training checkpoints wrap the weights; DataParallel prefixes 'module.'.
    wrapped = dict(model={f'module.{k}': v for k, v in official.items()}, optimizer={})
    assert list(convert_dpt_state_dict(wrapped)) == list(converted)
    assert convert_dpt_key('scratch.refinenet1.out_conv.bias') == \
        'decode_head.fusion_blocks.3.project.conv.bias'
    with pytest.raises(ValueError, match='unknown DPT checkpoint key'):
        convert_dpt_key('scratch.refinenet5.out_conv.bias')


@pytest.mark.parametrize('method', ['transform', 'tome', 'prune'])
def test_reduced_model_taps_the_full_grid_at_odd_sizes(method):
    torch.manual_seed(0)
    model = build_tiny(backbone=tt(method=method))
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        taps = model.backbone(x)
        depth = model.predict(x)
    assert [tuple(t.shape) for t in taps[:2]] == [(2, 32, 18, 23), (2, 64, 9, 12)]
    assert [(tuple(g.shape), tuple(c.shape)) for g, c in taps[2:]] == [((2, 32, 5, 6), (2, 32))] * 2
    assert [tuple(s.pred_depth_map.shape) for s in depth] == [(70, 90)] * 2
    assert all(torch.isfinite(s.pred_depth_map.data).all() and (s.pred_depth_map.data > 0).all()
               for s in depth)


@pytest.mark.parametrize('part,override,needle', [
    ('backbone', dict(resnet_norm_groups=7), 'resnet_norm_groups=7'),
    ('backbone', dict(patch_size=8), 'patch_size=8'),
    ('backbone', dict(resnet_out_indices=(0, 3)), 'resnet_out_indices=[3]'),
    ('backbone', dict(resnet_channels=(32, 64)), 'resnet_channels=(32, 64)'),
    ('backbone', tt(layers=(1, 4)), 'reduce_layers=[4] out of range'),
    ('backbone', dict(tt(), token_recovery=None), 'token_recovery is required'),
    ('head', dict(cnn_taps=(0, 5)), 'cnn_taps=[5]'),
    ('head', dict(readout_type='mean'), "readout_type='mean'"),
    ('head', dict(post_process_channels=(32, 64, 32)), 'post_process_channels=(32, 64, 32)'),
])
def test_bad_config_fails_at_build_naming_the_key(part, override, needle):
    with pytest.raises(ValueError) as info:
        build_tiny(**{part: override})
    assert needle in str(info.value)


def depth_sample(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = 1 + 4 * torch.rand(1, h, w, generator=g)
    gt[:, :8, :8] = 0   # missing depth
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    sample.gt_depth_map = PixelData(data=gt)
    return sample


def test_every_parameter_gets_a_gradient_from_the_depth_losses():
    torch.manual_seed(0)
    losses = [dict(type='SiLogLoss'), dict(type='ScaleShiftInvariantLoss'),
              dict(type='GradientMatchingLoss', loss_weight=0.5)]
    model = build_tiny(backbone=tt(), head=dict(loss_decode=losses)).train()
    model.decode_head.depth_head[4].bias.data.fill_(1.0)
    out = model.loss(torch.randn(2, 3, 64, 96), [depth_sample(seed=0), depth_sample(seed=1)])
    assert set(out) == {'decode.loss_silog', 'decode.loss_ssi', 'decode.loss_grad'}
    sum(out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_losses_are_invariant_where_they_should_be_and_ignore_missing_depth():
    gt = depth_sample().gt_depth_map.data[None]              # [1, 1, 64, 96], zeros missing
    valid = gt > 0
    garbage = torch.where(valid, gt, torch.full_like(gt, 123.0))
    ssi, grad = ScaleShiftInvariantLoss(), GradientMatchingLoss()
    aligned = torch.where(valid, 1 / (2 / gt.clamp(min=1e-3) + 0.3), garbage)
    assert ssi(aligned, gt) < 1e-8
    assert ScaleShiftInvariantLoss(space='depth')(3 * garbage - 1, gt) < 1e-8
    assert grad(2.5 * garbage, gt) < 1e-6
    noisy = gt.clamp(min=0.5) * (1 + 0.3 * torch.rand_like(gt))
    assert ssi(noisy, gt) > 1e-4 and grad(noisy, gt) > 1e-3
    batch = torch.cat([gt, gt]), torch.cat([aligned, noisy])
    assert ssi(batch[1], batch[0], reduction_override='none').shape == (2,)
    with pytest.raises(ValueError, match="space='log'"):
        ScaleShiftInvariantLoss(space='log')


def test_bts_metric_reports_nine_metrics_with_table3_silog():
    gt = depth_sample().gt_depth_map.data
    pred = gt.clamp(min=0.5) * (1.1 + 0.2 * torch.rand_like(gt))
    sample = dict(gt_depth_map=dict(data=gt), pred_depth_map=dict(data=pred), img_path='a.jpg')
    ours, mmseg = BTSDepthMetric(min_depth_eval=1e-3, max_depth_eval=10), DepthMetric(
        min_depth_eval=1e-3, max_depth_eval=10)
    for metric in (ours, mmseg):
        metric.process({}, [sample, sample])
    got, ref = ours.compute_metrics(ours.results), mmseg.compute_metrics(mmseg.results)
    assert list(got) == list(METRICS)
    err = (pred[gt > 1e-3].log() - gt[gt > 1e-3].log()).double()
    assert got['silog'] == pytest.approx(100 * err.std(unbiased=False).item(), rel=1e-4)
    assert got['silog'] != pytest.approx(100 * ref['silog'], rel=1e-3)   # mmseg: lambda 0.5
    for k in METRICS[:-1]:
        assert got[k] == pytest.approx(ref[k], rel=1e-5), k
    assert list(BTSDepthMetric(depth_metrics=['abs_rel', 'rmse']).metrics) == ['abs_rel', 'rmse']
    with pytest.raises(ValueError, match="'mae'"):
        BTSDepthMetric(depth_metrics=['mae'])


def test_shipped_configs_build_and_reduce_flops_with_tiny_overrides():
    plain_cfg = Config.fromfile(str(REPO / 'configs/dpt/dpt_nyu.py'))
    tt_cfg = Config.fromfile(str(REPO / 'configs/dpt/dpt_tt_nyu.py'))
    hourglass_cfg = Config.fromfile(str(REPO / 'configs/dpt/dpt_hourglass_nyu.py'))
    assert plain_cfg.model.backbone.reduce_layers == []
    assert tt_cfg.model.backbone.token_transform.keep_ratio == 0.7
    # Expedit-DPT's NYUv2 point: 5 rounds, 5 x 5, temperature 1 for both layers, k 20, after block 2.
    hourglass = hourglass_cfg.model.backbone
    assert hourglass.reduce_layers == (3,) and hourglass.token_transform.method == 'hourglass'
    assert (hourglass.token_transform.cluster_iters, hourglass.token_transform.cluster_window,
            hourglass.token_transform.cluster_temperature) == (5, 5, 1.0)
    assert hourglass.token_recovery == dict(type='TokenRecovery', mode='reconstruct', k=20, temperature=1.0)
    from mmtt.functional import cluster_grid
    assert cluster_grid((30, 40), hourglass.token_transform.keep_ratio) == (12, 16)
    for cfg in (plain_cfg, tt_cfg, hourglass_cfg):
        assert cfg.custom_imports.imports == ['mmtt']
        assert cfg.test_evaluator.type == 'BTSDepthMetric'
        assert cfg.test_evaluator.crop_type == 'nyu_crop'
        assert cfg.test_dataloader.dataset.type == 'NYUDataset'
        assert 'SyncBN' not in cfg.pretty_text
    flops = []
    for cfg in (plain_cfg, tt_cfg, hourglass_cfg):
        cfg.model.backbone.update(TINY_BACKBONE)
        cfg.model.backbone.reduce_layers = [i for i in cfg.model.backbone.reduce_layers if i < 4]
        cfg.model.decode_head.update(TINY_HEAD)
        init_default_scope('mmseg')
        model = MODELS.build(cfg.model).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 96), mode='tensor').shape == (1, 1, 64, 96)
        flops.append(count_flops(model.backbone, (torch.randn(1, 3, 128, 160),)).total)
    assert flops[1] < flops[0] and flops[2] < flops[0]


@pytest.fixture(scope='module')
def nyu_setup(tmp_path_factory):
    """Tiny NYU set and a tiny official-layout checkpoint converted by the tool."""
    tmp = tmp_path_factory.mktemp('nyu')
    write_tiny_nyu(tmp / 'data')
    torch.save(official_state().state_dict(), tmp / 'dpt_official_tiny.pt')
    convert_dpt_checkpoint.main([str(tmp / 'dpt_official_tiny.pt'), str(tmp / 'dpt_tiny.pth')])
    build_tiny().load_state_dict(torch.load(tmp / 'dpt_tiny.pth')['state_dict'], strict=True)
    return tmp, tmp / 'dpt_tiny.pth'


@pytest.fixture(scope='module')
def tool_runs(nyu_setup):
    """tools/test.py on the unmodified, keep-ratio-1 and reduced tiny configs, with --out."""
    tmp, ckpt = nyu_setup
    configs = dict(plain=write_config(tmp, 'plain', {}, base='configs/dpt/dpt_nyu.py'),
                   keep1=write_config(tmp, 'keep1', tt(keep_ratio=1.0)),
                   reduced=write_config(tmp, 'reduced', tt(keep_ratio=0.6)))
    metrics = {name: run_tool([sys.executable, str(REPO / 'tools/test.py'), str(cfg), str(ckpt),
                               '--out', f'out_{name}', '--work-dir', f'wd_{name}'], tmp)
               for name, cfg in configs.items()}
    return metrics, {name: depth_pngs(tmp / f'out_{name}') for name in configs}


def test_tools_test_prints_nine_metrics_and_keep_one_equals_unmodified(tool_runs):
    metrics, maps = tool_runs
    for m in metrics.values():
        assert list(m) == list(METRICS)
        assert 0 <= m['d1'] <= m['d2'] <= m['d3'] <= 1
        assert all(m[k] > 0 for k in METRICS[3:])
    assert metrics['plain'] == metrics['keep1']
    assert len(maps['plain']) == 3 and maps['plain'].keys() == maps['keep1'].keys()
    assert all(a.shape == (480, 640) and a.dtype == np.uint16 for a in maps['plain'].values())
    assert all(np.array_equal(maps['plain'][k], maps['keep1'][k]) for k in maps['plain'])
    assert any(not np.array_equal(maps['plain'][k], maps['reduced'][k]) for k in maps['plain'])


def test_dist_test_on_two_cpu_processes_matches_one(nyu_setup, tool_runs):
    tmp, ckpt = nyu_setup
    double = run_tool(['bash', str(REPO / 'tools/dist_test.sh'), str(tmp / 'reduced.py'), str(ckpt),
                       '2', '--out', 'out_double', '--work-dir', 'wd_double'], tmp,
                      dict(PORT=free_port()))
    assert list(double) == list(METRICS)
    assert double == pytest.approx(tool_runs[0]['reduced'], abs=2e-4)
    maps = depth_pngs(tmp / 'out_double')
    assert maps.keys() == tool_runs[1]['reduced'].keys()
    assert all(np.array_equal(maps[k], tool_runs[1]['reduced'][k]) for k in maps)


def test_tools_train_fine_tunes_the_reduced_model_with_the_shipped_pipeline(nyu_setup):
    tmp, _ = nyu_setup
    for kind in ('images', 'annotations'):
        if not (tmp / f'data/{kind}/train').exists():
            shutil.copytree(tmp / f'data/{kind}/test', tmp / f'data/{kind}/train')
    cfg = write_config(tmp, 'train', tt(keep_ratio=0.6))
    with open(cfg, 'a') as f:   # dpt_nyu.py's train pipeline: 480x480 crops, padded to /32
        f.write(f"""
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{tmp / "data"}'))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=2, save_best=None), logger=dict(interval=1))
""")
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, str(REPO / 'tools/train.py'), str(cfg), '--work-dir',
                           'wd_train'], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    losses = [float(v) for v in re.findall(r'decode\.loss_silog: ([\d.]+)', out)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp / 'wd_train/iter_2.pth').exists()
