"""benchmarks/gpu.py end to end at tiny sizes on the CPU: every configuration timed, speed-ups
against the same run's unmodified model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import gpu  # noqa: E402


def test_small_cpu_run_writes_every_configuration(tmp_path, capsys):
    out = tmp_path / 'gpu.json'
    gpu.main(['--device', 'cpu', '--small', '--json', str(out)])
    results = json.loads(out.read_text())
    assert set(results['provenance']) >= {'hardware', 'versions', 'commit', 'command', 'date'}
    assert results['batches'] == [1, 2]
    assert set(results['models']) == {*gpu.TIMM_MODELS, *gpu.CONFIGS}
    for name, entry in results['models'].items():
        timm_model = name in gpu.TIMM_MODELS
        assert entry['variants'] == (list(gpu.TIMM_VARIANTS) if timm_model else ['unmodified', 'config'])
        assert entry['modes'] == (['eager', 'compiled'] if timm_model else ['eager'])
        rows = {(r['variant'], r['dtype'], r['batch'], r['mode']): r for r in entry['rows']}
        expected = {(v, d, b, m) for v in entry['variants'] for d in gpu.DTYPES for b in (1, 2)
                    for m in entry['modes']}
        assert set(rows) == expected and len(entry['rows']) == len(expected)
        for (variant, dtype, batch, mode), row in rows.items():
            assert row['seconds'] > 0
            plain = rows['unmodified', dtype, batch, mode]['seconds']
            assert row['speedup'] == pytest.approx(plain / row['seconds'])
    assert results['skipped'] == [] and results['max_minutes'] == 8
    captured = capsys.readouterr()
    assert '| vit_b16_224 | paper | bfloat16 | 2 | compiled |' in captured.out
    # A progress line per case, every eager case before the compiled ones.
    progress = [line for line in captured.err.splitlines() if line.startswith('[')]
    cases = gpu.plan([*gpu.TIMM_MODELS, *gpu.CONFIGS], [1, 2])
    assert len(progress) == len(cases) and progress[0].startswith(f'[1/{len(cases)} 0:')
    assert [' eager ' in line for line in progress] == [mode == 'eager' for mode, *_ in cases]


def test_no_cuda_device_is_one_line():
    # No device visible to the child process, on a GPU machine too.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks/gpu.py')], capture_output=True, text=True,
                          env=env)
    assert done.returncode != 0
    assert done.stderr.strip().count('\n') == 0 and 'no CUDA device' in done.stderr


def test_the_budget_skips_the_cases_that_would_overrun_it_with_a_note(tmp_path, monkeypatch, capsys):
    # A clock that moves only while a case runs: each case takes 50 s, the budget is 3 minutes.
    now = [0.0]

    def case(nets, shape, dtype_name, batch, mode, args, device):
        now[0] += 50.0
        return [dict(variant=key, dtype=dtype_name, batch=batch, mode=mode, seconds=1.0, speedup=1.0)
                for key in nets]

    monkeypatch.setattr(gpu.time, 'perf_counter', lambda: now[0])
    monkeypatch.setattr(gpu, 'measure_case', case)
    monkeypatch.setattr(gpu, 'build_models', lambda name, small, device: {'unmodified': torch.nn.Identity()})
    out = tmp_path / 'gpu.json'
    gpu.main(['--device', 'cpu', '--small', '--max-minutes', '3', '--json', str(out)])
    results = json.loads(out.read_text())
    cases = gpu.plan([*gpu.TIMM_MODELS, *gpu.CONFIGS], [1, 2])
    # 0, 50 and 100 s spent leave room for a 50 s case; at 150 s none fits, compiled ones included.
    assert sum(len(entry['rows']) for entry in results['models'].values()) == 3
    assert len(results['skipped']) == len(cases) - 3
    first = results['skipped'][0]
    assert (first['model'], first['mode']) == (cases[3][1], 'eager')
    assert first['reason'] == 'the 3-minute budget: 2.5 min spent, the case takes about 0.8 min'
    assert results['seconds_total'] == 150.0
    err = capsys.readouterr().err
    assert err.count(': skipped (') == len(cases) - 3


def test_a_spent_budget_skips_every_case_and_a_negative_one_is_refused(tmp_path, capsys):
    out = tmp_path / 'gpu.json'
    gpu.main(['--device', 'cpu', '--small', '--max-minutes', '1e-9', '--models', 'vit_s16_224', '--json', str(out)])
    results = json.loads(out.read_text())
    assert len(results['skipped']) == 8 and results['models']['vit_s16_224']['rows'] == []
    assert all(case['reason'] == 'the 1e-09-minute budget is spent' for case in results['skipped'])
    table = capsys.readouterr().out
    assert '| vit_s16_224 | skipped: the 1e-09-minute budget is spent | float16 | 1 | eager |' in table
    with pytest.raises(SystemExit):
        gpu.parse_args(['--max-minutes', '-1'])
    assert '--max-minutes -1.0 must be >= 0' in capsys.readouterr().err.splitlines()[-1]
