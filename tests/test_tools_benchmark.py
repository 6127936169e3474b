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


def load_render():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        'render', Path(__file__).resolve().parents[1] / 'benchmarks' / 'render.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compiled_run_records_compile_and_dtype_and_renders_beside_the_eager_one(tmp_path, monkeypatch):
    # The eager backend traces with dynamo (guards, graphs) without generating code: seconds, not minutes.
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    out = tmp_path / 'compiled' / 'hosts_segmenter.json'
    results = benchmark.main(['--model', 'vit_tiny_patch16_224', '--img-size', '64', '--methods', 'transform',
                              '--batch', '2', '--warmup', '0', '--repeats', '1', '--threads', '1',
                              '--compile', '--compile-backend', 'eager', '--dtype', 'bfloat16', '--json', str(out)])
    # One graph per variant and batch size, traced in this process (peak memory: in others).
    assert counters['stats']['unique_graphs'] >= 4, dict(counters['stats'])
    torch._dynamo.reset()
    assert [r['method'] for r in results] == ['unmodified', 'transform']
    assert all(r['latency_ms'] > 0 and r['throughput'] > 0 and r['peak_mem_mb'] > 0 for r in results)
    saved = json.loads(out.read_text())
    assert saved['compile'] is True and saved['compile_mode'] == 'default' and saved['compile_backend'] == 'eager'
    assert saved['dtype'] == 'bfloat16' and saved['provenance']['dtype'] == 'bfloat16'
    # The renderer puts the compiled run beside an eager one of the same name.
    eager = dict(saved, compile=False, results=[dict(r, latency_ratio=1.0) for r in saved['results']])
    (tmp_path / 'hosts_segmenter.json').write_text(json.dumps(eager))
    render = load_render()
    monkeypatch.setattr(render, 'RESULTS', tmp_path)
    text = render.RENDERERS['compiled:hosts'](tmp_path / 'page.md')
    ratio = saved['results'][1]['latency_ratio']
    assert f'| transform | {saved["results"][1]["latency_ms"]:.0f} / ' in text
    assert f'| x1.00 / x{ratio:.2f} |' in text
    assert 'benchmarks/results/compiled/hosts_segmenter.json' in text
    assert '`benchmarks/hosts.sh dpt compile`, `benchmarks/hosts.sh dino compile`' in text


BAD_SPEED_OPTIONS = [
    (['--compile-mode', 'reduce-overhead'], '--compile-mode needs --compile'),
    (['--compile-backend', 'eager'], '--compile-backend needs --compile'),
    (['--compile', '--compile-backend', 'inductr'], "--compile-backend 'inductr': not a torch.compile backend"),
    (['--compile', '--compile-mode', 'fastest'], "argument --compile-mode: invalid choice: 'fastest'"),
    (['--compile', '--compile-backend', 'eager', '--compile-mode', 'max-autotune'], 'needs the inductor backend'),
    (['--dtype', 'int8'], "argument --dtype: invalid choice: 'int8'"),
]


@pytest.mark.parametrize('argv,needle', BAD_SPEED_OPTIONS)
def test_bad_compile_and_dtype_options_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--model', 'vit_tiny_patch16_224', *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert 'error:' in err[-1] and needle in err[-1] and sum('error' in line for line in err) == 1


def test_compiled_pareto_renders_speedups_and_their_share_of_the_gflops_reduction(tmp_path, monkeypatch):
    def run(compiled, fast_speedup):
        base = dict(label='unmodified', keep_ratio=1.0, speedup_b1=1.0, speedup_batch=1.0, gflops_ratio=1.0,
                    latency_ms=100.0 if compiled else 200.0)
        fast = dict(label='fast', keep_ratio=0.7, speedup_b1=fast_speedup, speedup_batch=1.2, gflops_ratio=0.625,
                    latency_ms=50.0, iou=0.95)
        if compiled:   # fidelity of its own compiled forwards beside the eager one
            fast.update(compile_max_abs_diff=0.1, compiled_iou=0.94)
        return dict(config=dict(batch=4), compile=compiled, compile_mode='default', compile_backend='inductor',
                    points=[base, fast], dtype='float32', provenance=dict(commit='abc', date='2026-12-05'))
    (tmp_path / 'compiled').mkdir()
    (tmp_path / 'pareto_vit_s14_fp32.json').write_text(json.dumps(run(False, 1.5)))
    (tmp_path / 'compiled' / 'pareto_vit_s14_fp32.json').write_text(json.dumps(run(True, 1.6)))
    render = load_render()
    monkeypatch.setattr(render, 'RESULTS', tmp_path)
    text = render.RENDERERS['compiled:pareto'](tmp_path / 'page.md')
    # Speed-ups eager / compiled, then each over the GFLOPs ratio 1 / 0.625 = 1.6.
    assert "| `preset='fast'` | x1.50 / x1.60 | x1.20 / x1.20 |" in text
    assert "| `preset='fast'` | 0.94 / 1.00 | 0.75 / 0.75 |" in text
    assert 'eager / compiled: 200 / 100 ms' in text
    assert "| `preset='fast'` | 0.950 / 0.940 |" in text
    assert '`benchmarks/pareto_vit_s14.sh bf16 compile`, `benchmarks/pareto_vit_s14.sh 224 compile`' in text
