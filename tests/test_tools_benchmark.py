"""tools/benchmark.py: timm models side by side in fresh processes, and detector / segmentor
configs timed in eval mode, whole or backbone alone."""
import json

import pytest
import torch
from tiny_coco import TINY_SWIN, TINY_TT, write_config
from torch import nn

from mmtt.analysis import count_flops
from mmtt.tools import benchmark


def test_timm_variants_side_by_side_with_ratios_and_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    results = benchmark.main(['--model', 'vit_tiny_patch16_224', '--img-size', '112', '--methods',
                              'transform', 'tome', '--top-k', '4', '--batch', '2', '--warmup', '0',
                              '--repeats', '1', '--threads', '1', '--json', str(out)])
    assert [r['method'] for r in results] == ['unmodified', 'transform', 'tome', 'transform k=4']
    base, transform, _, sparse = results
    assert base['gflops_ratio'] == 1.0 and base['compression_gflops'] == 0
    assert transform['gflops'] < base['gflops'] and transform['compression_gflops'] > 0
    assert 0 < sparse['compression_gflops'] < transform['compression_gflops']
    assert json.loads(out.read_text())['results'][3]['method'] == 'transform k=4'
    assert 'transform k=4' in capsys.readouterr().out


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_count_flops_leaves_every_module_in_its_own_mode():
    inner = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
    wrapper = Wrapper(inner)              # a fresh wrapper is in training mode
    count_flops(wrapper, (torch.randn(2, 4),))
    assert wrapper.training and not any(m.training for m in inner.modules())


@pytest.mark.parametrize('part', ['model', 'backbone'])
def test_detector_config_is_timed_in_eval_mode(tmp_path, part):
    # DINO in training mode needs ground-truth boxes: a benchmark that left it there crashed.
    config = write_config(tmp_path, 'tiny', {**TINY_SWIN, **TINY_TT, 'type': 'TokenSwinTransformer'})
    args = benchmark.parse_args(['--config', str(config), '--shape', '96', '128', '--part', part,
                                 '--batch', '1', '--warmup', '0', '--repeats', '1', '--threads', '1'])
    plain, reduced = benchmark.measure(args, [(None, None), ('config', None)])
    assert reduced['gflops'] < plain['gflops'] and reduced['compression_gflops'] > 0
    assert reduced['latency_ms'] > 0 and reduced['throughput'] > 0


def test_sdpa_baseline_is_the_unmodified_model_on_the_fused_kernel(tmp_path, sdpa_calls):
    from mmengine.config import Config
    from tiny_seg import TINY_VIT
    from tiny_seg import write_config as write_seg_config

    from mmtt.analysis import build_model, unmodified
    config = write_seg_config(tmp_path, 'tiny', dict(
        TINY_VIT, type='TokenVisionTransformer', reduce_layers=(1, 2),
        token_transform=dict(type='TokenTransform', keep_ratio=0.7),
        token_recovery=dict(type='TokenRecovery')))
    cfg = unmodified(Config.fromfile(str(config)))
    plain, fused = build_model(cfg), build_model(cfg)
    fused.load_state_dict(plain.state_dict())
    benchmark.use_fused_attention(fused.backbone)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fused.backbone(x)[-1], plain.backbone(x)[-1], atol=1e-5)
    assert len(sdpa_calls) == len(fused.backbone.layers)    # only the fused model called SDPA
    args = benchmark.parse_args(['--config', str(config), '--sdpa-baseline', '--batch', '1',
                                 '--warmup', '0', '--repeats', '1', '--threads', '1'])
    result, = benchmark.measure(args, [(benchmark.SDPA_BASELINE, None)])
    assert result['method'] == benchmark.SDPA_BASELINE and result['compression_gflops'] == 0
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--model', 'vit_tiny_patch16_224', '--sdpa-baseline'])


def test_rounds_interleave_the_variants_after_each_ones_warm_up(monkeypatch):
    from collections import Counter

    import mmtt.analysis
    from mmtt.analysis.flops import FlopReport
    calls = []

    class Net(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append((self.name, x.shape[0]))
            return x

    monkeypatch.setattr(benchmark, 'build_variant',
                        lambda args, m, k=None: (Net(benchmark.variant_name(m, k)), (4, 4)))
    monkeypatch.setattr(mmtt.analysis, 'count_flops', lambda net, inputs: FlopReport(10, {}, Counter(), 0))
    args = benchmark.parse_args(['--model', 'vit_tiny_patch16_224', '--batch', '2', '--warmup', '1',
                                 '--repeats', '3'])
    results = benchmark.measure(args, [(None, None), ('tome', None)])
    assert calls[:4] == [('unmodified', 1), ('unmodified', 2), ('tome', 1), ('tome', 2)]   # warm-up
    assert calls[4:] == [('unmodified', 1), ('unmodified', 2), ('tome', 1), ('tome', 2)] * 3
    assert [len(r['latency_ms_rounds']) for r in results] == [3, 3]
    assert [r['method'] for r in results] == ['unmodified', 'tome']


def test_a_fresh_process_reports_its_own_peak_memory_not_its_parents():
    # ru_maxrss would carry the parent's peak into the spawned child across fork and exec.
    args = benchmark.parse_args(['--model', 'vit_tiny_patch16_224', '--batch', '1', '--threads', '1'])
    ballast = torch.ones(160 * 2 ** 20)          # 640 MB, touched, held while the child runs
    parent = benchmark.peak_rss() / 2 ** 20
    child = benchmark.peak_memory_in_fresh_process(args, None)
    assert float(ballast[-1]) == 1.0 and 0 < child < parent - 500
