"""mmtt.tools.reduction_cost on a real photograph at a small size: every step is timed, the
budget lines add up, and bad arguments are refused. Timings are only checked to be positive."""
import pytest
import skimage.data
from PIL import Image

from mmtt.tools import reduction_cost


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photo')
    Image.fromarray(skimage.data.chelsea()).save(folder / 'chelsea.png')
    return folder


def test_every_step_is_timed_and_the_budget_adds_them(photo_folder, tmp_path):
    out = tmp_path / 'cost.json'
    results = reduction_cost.main(['--images', str(photo_folder), '--size', '112', '--keep-ratios', '0.7',
                                   '--dtypes', 'float32', 'bfloat16', '--repeats', '1', '--warmup', '0',
                                   '--score-strides', '2', '--top-k', '2', '--json', str(out)])
    assert set(results) == {'float32 keep 0.7', 'bfloat16 keep 0.7'}
    ms = results['float32 keep 0.7']
    assert set(ms) == {'sdpa', 'scores', 'scores stride 2', 'build', 'apply', 'build top_k=2',
                       'apply top_k=2', 'recovery nearest', 'recovery share', 'tome'}
    assert all(t >= 0 for t in ms.values()) and ms['build'] > 0
    lines = reduction_cost.budget_lines(ms, [2], [2])
    assert len(lines) == 2 * 2 * 2
    total = ms['scores'] - ms['sdpa'] + ms['build'] + ms['apply'] + ms['recovery nearest']
    assert f'{total:7.2f} ms' in lines[0]
    assert out.exists()


def test_mixed_and_anchored_builds_are_timed_when_asked(photo_folder):
    results = reduction_cost.main(['--images', str(photo_folder), '--size', '112', '--keep-ratios', '0.7',
                                   '--dtypes', 'float32', '--repeats', '1', '--warmup', '0',
                                   '--score-strides', '2', '--top-k', '2', '--mixed', '--anchor',
                                   '--distinct-stride', '4'])
    ms = results['float32 keep 0.7']
    forms = ['', ' top_k=2', ' anchored', ' anchored top_k=2', ' mixed', ' mixed top_k=2',
             ' mixed anchored', ' mixed anchored top_k=2']
    assert [k[len('build'):] for k in ms if k.startswith('build')] == forms
    assert all(f'apply{f}' in ms for f in forms)
    lines = reduction_cost.budget_lines(ms, [2], [2])
    assert len(lines) == 2 * len(forms) * 2
    assert any(line.lstrip().startswith('scores stride 2, mixed anchored top_k=2, recovery share')
               for line in lines)


@pytest.mark.parametrize('argv,needle', [
    (['--size', '100'], '--size 100'),
    (['--keep-ratios', '1.0'], '--keep-ratios 1.0'),
    (['--top-k', '0'], '--top-k'),
    (['--layer', '12'], '--layer 12'),
    (['--distinct-stride', '0'], '--distinct-stride'),
])
def test_bad_arguments_are_named(argv, needle, capsys):
    with pytest.raises(SystemExit):
        reduction_cost.parse_args(['--images', '.', *argv])
    assert needle in capsys.readouterr().err


def test_compiled_steps_are_timed_and_recorded(photo_folder, tmp_path):
    # The eager backend traces every step with dynamo without generating code.
    import json

    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    out = tmp_path / 'cost.json'
    results = reduction_cost.main(['--images', str(photo_folder), '--size', '112', '--keep-ratios', '0.9', '0.7',
                                   '--dtypes', 'float32', 'bfloat16', '--repeats', '1', '--warmup', '0',
                                   '--score-strides', '2', '--top-k', '2', '--compile', '--compile-backend',
                                   'eager', '--json', str(out)])
    steps = len(results['float32 keep 0.7'])
    # Every step at each dtype and keep ratio is its own graph, none run eagerly past a limit.
    assert counters['stats']['unique_graphs'] >= steps, dict(counters['stats'])
    torch._dynamo.reset()
    assert len(results) == 4 and all(t >= 0 for ms in results.values() for t in ms.values())
    saved = json.loads(out.read_text())
    assert saved['compile'] is True and saved['compile_backend'] == 'eager'
    assert saved['dtypes'] == ['float32', 'bfloat16']


@pytest.mark.parametrize('argv,needle', [
    (['--compile-mode', 'reduce-overhead'], '--compile-mode needs --compile'),
    (['--compile', '--compile-backend', 'inductr'], "--compile-backend 'inductr': not a torch.compile backend"),
    (['--compile', '--compile-mode', 'fastest'], "argument --compile-mode: invalid choice: 'fastest'"),
    (['--dtypes', 'float64'], "argument --dtypes: invalid choice: 'float64'"),
])
def test_bad_compile_and_dtype_options_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit):
        reduction_cost.parse_args(['--images', '.', *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert 'error:' in err[-1] and needle in err[-1] and sum('error' in line for line in err) == 1
