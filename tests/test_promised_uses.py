"""The three uses the documentation promises, kept true:

* ``python tools/test.py configs/segmenter_tt_ade20k.py CHECKPOINT`` and
  ``bash tools/dist_test.sh configs/segmenter_tt_ade20k.py CHECKPOINT N``, run from the
  checkout with exactly that config path (here on a tiny random checkpoint and tiny ADE20K-format
  data, the model shrunk by ``--cfg-options``), and ``tools/slurm_test.sh`` handing that path on;
* every top-level flagship config (configs/*.py) is an alias of one family config and loads to
  the same config, and every documented path of a config resolves;
* ``_base_ = ['mmtt::segmenter_tt_ade20k.py']`` (and the family path ``mmtt::segmenter/...``)
  resolves; from a built wheel this is tests/test_packaging.py's part.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from tiny_seg import REPO, TINY_VIT, free_port, predictions, run_tool, save_mmseg_checkpoint, write_tiny_ade20k

import mmtt  # noqa: F401  (registers the modules; `mmtt::` bases resolve once it is imported)

FLAGSHIP = 'configs/segmenter_tt_ade20k.py'
# The top-level configs the documentation names; each must stay (more may be added).
TOP_LEVEL = ('segmenter_tt_ade20k.py', 'segmenter_tt_cityscapes.py', 'dpt_tt_nyu.py', 'dpt_nyu.py',
             'dino_tt_swin-l_coco.py', 'dino_tt_swin-l_coco_36e.py', 'deit-s_tt_in1k.py')
# Family paths the documentation names beside them.
FAMILY_PATHS = ('segmenter/segmenter_tt_ade20k.py', 'segmenter/segmenter_tt_cityscapes.py', 'dpt/dpt_tt_nyu.py',
                'dpt/dpt_nyu.py', 'dino/dino_tt_swin-l_coco.py', 'dino/dino_tt_swin-l_coco_36e.py',
                'mmpretrain/deit-s_tt_in1k.py')


def tiny_options(cfg: Config, data_root: Path) -> list:
    """``--cfg-options`` that shrink Segmenter-L to TINY_VIT (the weights of
    :func:`tiny_seg.save_mmseg_checkpoint`) and point it at the tiny data set."""
    resize = next(i for i, t in enumerate(cfg.test_dataloader.dataset.pipeline) if t['type'] == 'Resize')

    def value(v):
        return f'({",".join(map(str, v))})' if isinstance(v, tuple) else str(v)
    opts = ['model.pretrained=None', 'model.data_preprocessor.size=(64,64)', 'model.backbone.reduce_layers=(1,2)']
    opts += [f'model.backbone.{k}={value(v)}' for k, v in TINY_VIT.items()]
    opts += [f'model.decode_head.{k}={v}' for k, v in
             dict(in_channels=32, channels=32, num_heads=2, embed_dims=32, num_layers=1).items()]
    opts += ['model.test_cfg.crop_size=(64,64)', 'model.test_cfg.stride=(48,48)',
             f'test_dataloader.dataset.data_root={data_root}',
             f'test_dataloader.dataset.pipeline.{resize}.scale=(128,64)',
             'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    return ['--cfg-options', *opts]


@pytest.fixture(scope='module')
def flagship_run(tmp_path_factory):
    """One ``python tools/test.py configs/segmenter_tt_ade20k.py CKPT`` run from the checkout;
    its metrics and predictions are shared by the tests below."""
    tmp = tmp_path_factory.mktemp('promised')
    write_tiny_ade20k(tmp / 'data')
    ckpt = save_mmseg_checkpoint(tmp)
    options = tiny_options(Config.fromfile(str(REPO / FLAGSHIP)), tmp / 'data')
    metrics = run_tool([sys.executable, 'tools/test.py', FLAGSHIP, str(ckpt), *options,
                        '--work-dir', str(tmp / 'wd1'), '--out', str(tmp / 'out1')], REPO)
    return tmp, ckpt, options, metrics


def test_tools_test_runs_the_top_level_flagship_config(flagship_run):
    tmp, _, _, metrics = flagship_run
    assert all(0 <= m <= 100 for m in metrics), metrics
    assert len(predictions(tmp / 'out1')) == 3
    # the config the run used, as its Runner saved it: the flagship's reduction on the tiny model
    cfg = Config.fromfile(str(tmp / 'wd1' / Path(FLAGSHIP).name))
    assert cfg.model.backbone.type == 'TokenVisionTransformer'
    assert tuple(cfg.model.backbone.reduce_layers) == (1, 2) and cfg.model.backbone.embed_dims == 32


def test_dist_test_on_two_cpu_ranks_gives_the_same_metrics(flagship_run):
    tmp, ckpt, options, single = flagship_run
    # MMEngine collects the ranks' results through a folder .dist_test/ in the working directory
    # and leaves it behind, empty: not in the checkout.
    scratch = REPO / '.dist_test'
    had_scratch = scratch.exists()
    try:
        double = run_tool(['bash', 'tools/dist_test.sh', FLAGSHIP, str(ckpt), '2', *options,
                           '--work-dir', str(tmp / 'wd2'), '--out', str(tmp / 'out2')], REPO,
                          dict(PORT=free_port()))
    finally:
        if not had_scratch and scratch.is_dir() and not any(scratch.iterdir()):
            scratch.rmdir()
    assert double == single
    a, b = predictions(tmp / 'out1'), predictions(tmp / 'out2')
    assert len(a) == 3 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


FAKE_SRUN = '''#!{python}
"""Stands in for Slurm's srun: records its arguments and PYTHONPATH, then runs the program with
the srun options removed, as task 0 of a one-task job (SLURM_* set as srun would)."""
import json, os, sys
args = sys.argv[1:]
with open({record!r}, 'w') as f:
    json.dump(dict(argv=args, pythonpath=os.environ.get('PYTHONPATH', '')), f)
i = 0
while i < len(args) and args[i].startswith('-'):
    i += 2 if args[i] in ('-p', '-J', '-n', '-N', '-c') else 1
env = dict(os.environ, SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NTASKS='1', SLURM_NNODES='1',
           SLURM_NODELIST='localhost', SLURM_JOB_ID='1')
os.execvpe(args[i], args[i:], env)
'''


def test_slurm_test_hands_the_config_path_to_tools_test_with_the_slurm_launcher(flagship_run, tmp_path):
    """No Slurm here: a stand-in ``srun`` first on PATH records what tools/slurm_test.sh asks it
    to run, then runs that command. Checked: the command line (the config path unchanged,
    ``--launcher slurm``, the extra arguments after it) and that tools/test.py, run as written,
    loads that config and gets as far as the launcher, which on a machine without GPUs is refused
    with one line (CUDA is hidden, so this holds on any machine). A multi-GPU Slurm job itself is
    not run."""
    _, ckpt, options, _ = flagship_run
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    record = tmp_path / 'srun.json'
    srun = bin_dir / 'srun'
    srun.write_text(FAKE_SRUN.format(python=sys.executable, record=str(record)))
    srun.chmod(0o755)
    extra = [*options, '--work-dir', str(tmp_path / 'wd')]
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', PYTHON=sys.executable,
               GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1', CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', 'tools/slurm_test.sh', 'PART', 'JOB', FLAGSHIP, str(ckpt), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    recorded = json.loads(record.read_text())
    assert recorded['argv'] == [
        '-p', 'PART', '--job-name=JOB', '--gres=gpu:2', '--ntasks=2', '--ntasks-per-node=2',
        '--cpus-per-task=1', '--kill-on-bad-exit=1',
        sys.executable, '-u', 'tools/test.py', FLAGSHIP, str(ckpt), '--launcher', 'slurm', *extra]
    assert Path(REPO / recorded['pythonpath'].split(os.pathsep)[0]).resolve() == REPO
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'test.py: error: --launcher slurm without GPUs is not supported'), proc.stderr[-2000:]


def alias_target(path: Path) -> str:
    """The family config a top-level config inherits (``./FAMILY/NAME.py``), checked to be its
    only statement."""
    tree = ast.parse(path.read_text())
    assert len(tree.body) == 1, f'{path.name}: only `_base_ = [...]` belongs in a top-level config'
    node = tree.body[0]
    assert isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['_base_'], path.name
    base = ast.literal_eval(node.value)
    assert isinstance(base, list) and len(base) == 1, f'{path.name}: inherits {base!r}, not one family config'
    target = base[0]
    assert target.startswith('./') and target.count('/') == 2, f'{path.name}: {target!r} is not ./FAMILY/NAME.py'
    assert (path.parent / target).is_file(), f'{path.name}: {target} does not exist'
    return target[2:]


def test_documented_top_level_and_family_configs_exist():
    top = {p.name for p in (REPO / 'configs').glob('*.py')}
    assert set(TOP_LEVEL) <= top, sorted(set(TOP_LEVEL) - top)
    assert all((REPO / 'configs' / p).is_file() for p in FAMILY_PATHS)
    assert {alias_target(REPO / 'configs' / name) for name in TOP_LEVEL} == set(FAMILY_PATHS)


def without_mmtt_scope(value):
    """A config dict without the ``_scope_='mmtt'`` MMEngine adds to each dict with a ``type``
    (and no scope yet) that comes through an ``mmtt::`` base."""
    if isinstance(value, dict):
        return {k: without_mmtt_scope(v) for k, v in value.items() if not (k == '_scope_' and v == 'mmtt')}
    if isinstance(value, (list, tuple)):
        return type(value)(without_mmtt_scope(v) for v in value)
    return value


def mmtt_scoped(value, path='cfg'):
    """Where a config dict holds ``_scope_='mmtt'``."""
    if isinstance(value, dict):
        if value.get('_scope_') == 'mmtt':
            yield f"{path} (type={value.get('type')!r})"
        for k, v in value.items():
            yield from mmtt_scoped(v, f'{path}.{k}')
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from mmtt_scoped(v, f'{path}[{i}]')


TOP_LEVEL_FOUND = sorted(p.name for p in (REPO / 'configs').glob('*.py'))


@pytest.mark.parametrize('name', TOP_LEVEL_FOUND)
def test_top_level_config_loads_as_its_family_config(name):
    """``configs/NAME.py`` loads to exactly its family config."""
    want = Config.fromfile(str(REPO / 'configs' / alias_target(REPO / 'configs' / name)))
    got = Config.fromfile(str(REPO / 'configs' / name))
    assert got.model == want.model
    assert got.to_dict() == want.to_dict()


@pytest.mark.parametrize('name', TOP_LEVEL_FOUND)
def test_mmtt_bases_load_as_the_family_config(name, tmp_path):
    """``_base_ = ['mmtt::NAME.py']`` and ``['mmtt::FAMILY/NAME.py']`` in a config outside the
    checkout, resolved through this environment's install of mmtt, load to the family config."""
    family = alias_target(REPO / 'configs' / name)
    want = Config.fromfile(str(REPO / 'configs' / family))
    for i, form in enumerate((f'mmtt::{name}', f'mmtt::{family}')):
        downstream = tmp_path / f'downstream_{i}.py'
        downstream.write_text(f'_base_ = [{form!r}]\n')
        got = Config.fromfile(str(downstream)).to_dict()
        assert without_mmtt_scope(got['model']) == want.to_dict()['model'], form
        assert without_mmtt_scope(got) == want.to_dict(), form
        # MMEngine has no registry scope 'mmtt': a model dict marked with it does not build
        # (its nested SegDataPreProcessor is then looked up in MMEngine's root registry).
        scoped = [where for where in mmtt_scoped(got['model'], 'model')]
        assert not scoped, f"{form}: _scope_='mmtt' on {scoped}"
