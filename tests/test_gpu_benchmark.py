"""benchmarks/gpu.py end to end at tiny sizes on the CPU: every configuration timed, speed-ups
against the same run's unmodified model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    table = capsys.readouterr().out
    assert '| vit_b16_224 | paper | bfloat16 | 2 | compiled |' in table


def test_no_cuda_device_is_one_line():
    if gpu.torch.cuda.is_available():
        pytest.skip('a CUDA device is present')
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks/gpu.py')], capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.strip().count('\n') == 0 and 'no CUDA device' in done.stderr
