"""mmtt as an installed package: a downstream project inherits `mmtt::` configs, no checkout."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from tiny_seg import REPO, TINY_VIT, run_tool, save_mmseg_checkpoint, write_config, write_tiny_ade20k


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """Build a wheel from a copy of the checkout and install it into a bare target folder."""
    tmp = tmp_path_factory.mktemp('pkg')
    src = tmp / 'src'
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                    str(src), '-w', str(tmp / 'dist')], check=True, capture_output=True)
    wheel = next((tmp / 'dist').glob('mmtt-*.whl'))
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target',
                    str(tmp / 'site'), str(wheel)], check=True, capture_output=True)
    return tmp / 'site'


def test_wheel_ships_configs_metafiles_and_tools(installed):
    mim = installed / 'mmtt/.mim'
    assert (mim / 'configs/segmenter/segmenter_tt_ade20k.py').is_file()
    assert (mim / 'configs/segmenter_tt_ade20k.py').is_file()
    assert (mim / 'tools/dist_test.sh').is_file()
    index = yaml.safe_load((mim / 'model-index.yml').read_text())
    listed = []
    for metafile in index['Import']:
        meta = yaml.safe_load((mim / metafile).read_text())
        for model in meta['Models']:
            assert (mim / model['Config']).is_file(), model['Config']
            meta_flops = model['Metadata']
            assert (meta_flops['GFLOPs'] < meta_flops['GFLOPs (unmodified)']) == bool(meta_flops['Reduce Layers'])
            listed.append(model['Config'])
    # The configs of the family folders are the metafiles' models; a top-level config is an
    # alias, `_base_ = ['./FAMILY/NAME.py']` over a listed one.
    shipped = sorted(str(p.relative_to(mim)) for p in (mim / 'configs').glob('*/**/*.py'))
    assert sorted(listed) == shipped
    top_level = sorted((mim / 'configs').glob('*.py'))
    checkout = sorted((REPO / 'configs').glob('*.py'))
    assert [p.name for p in top_level] == [p.name for p in checkout]
    for path in top_level:
        base = re.findall(r"^_base_ = \['\./([\w/.-]+)'\]$", path.read_text(), re.M)
        assert len(base) == 1 and f'configs/{base[0]}' in listed, (path.name, base)


def test_downstream_config_inherits_mmtt_config_and_tests_without_checkout(installed, tmp_path):
    write_tiny_ade20k(tmp_path / 'data')
    ckpt = save_mmseg_checkpoint(tmp_path)
    downstream = write_config(
        tmp_path, 'downstream', dict(TINY_VIT, reduce_layers=(1, 2)),
        base='mmtt::segmenter_tt_ade20k.py', replace_backbone=False,
        header="custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)\n")
    # the family path resolves too
    family = write_config(
        tmp_path, 'downstream_family', dict(TINY_VIT, reduce_layers=(1, 2)),
        base='mmtt::segmenter/segmenter_tt_ade20k.py', replace_backbone=False,
        header="custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)\n")
    work = tmp_path / 'elsewhere'
    work.mkdir()
    env = dict(PYTHONPATH=str(installed))
    where = subprocess.run([sys.executable, '-c', 'import mmtt; print(mmtt.__file__)'], cwd=work,
                           env=dict(os.environ, **env), capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(installed)), where.stdout
    cfg_text = subprocess.run(
        [sys.executable, '-c', f'import mmtt; from mmengine.config import Config\n'
                               f'for p in ("{downstream}", "{family}"):\n'
                               f'    c = Config.fromfile(p); print(c.model.backbone.type, '
                               f'c.model.backbone.reduce_layers, c.model.backbone.token_transform.keep_ratio)'],
        cwd=work, env=dict(os.environ, **env), capture_output=True, text=True, check=True).stdout
    assert cfg_text.splitlines() == ['TokenVisionTransformer (1, 2) 0.7'] * 2, cfg_text
    metrics = run_tool([sys.executable, '-m', 'mmtt.tools.test', str(downstream), str(ckpt)], work, env)
    assert 0 <= metrics[1] <= 100


def test_version_check_names_installed_and_supported(monkeypatch):
    import mmtt.compat as compat
    monkeypatch.setitem(compat.SUPPORTED, 'mmcv', ('2.0.0', '2.1.0'))
    with pytest.raises(ImportError, match=r'mmcv 2\.1\.0 is installed; mmtt supports mmcv>=2\.0\.0,<2\.1\.0'):
        compat.check_versions('mmcv')
    monkeypatch.setitem(compat.SUPPORTED, 'mmcv', ('2.0.0', '2.2.0'))
    compat.check_versions('mmcv')


def test_mmseg_own_test_tool_takes_a_downstream_config_through_the_start_up_hook(installed, tmp_path):
    """mmseg's tools/test.py never imports mmtt before parsing `_base_`: the wheel's .pth hook
    makes `mmtt::` resolve; the same run without the hook fails on that base."""
    import mmseg
    import torch
    assert (installed / 'mmtt-mim.pth').is_file() and (installed / '_mmtt_mim_hook.py').is_file()
    write_tiny_ade20k(tmp_path / 'data')
    # A bare state dict: upstream tools do not allow-list a Runner checkpoint's objects.
    state = torch.load(save_mmseg_checkpoint(tmp_path), weights_only=False)['state_dict']
    ckpt = tmp_path / 'state_only.pth'
    torch.save(dict(state_dict=state), ckpt)
    downstream = write_config(
        tmp_path, 'downstream', dict(TINY_VIT, reduce_layers=(1, 2)),
        base='mmtt::segmenter_tt_ade20k.py', replace_backbone=False,
        header="custom_imports = dict(imports=['mmtt'], allow_failed_imports=False)\n")
    mmseg_test = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools', 'test.py')
    work = tmp_path / 'elsewhere'
    work.mkdir()
    run = ('import runpy, site, sys; {}sys.argv = sys.argv[1:]; '
           'runpy.run_path(sys.argv[0], run_name="__main__")')
    args = [str(mmseg_test), str(downstream), str(ckpt)]
    env = dict(PYTHONPATH=str(installed))
    without = subprocess.run([sys.executable, '-c', run.format(''), *args], cwd=work,
                             env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)
    assert without.returncode != 0 and '_get_package_and_cfg_path' in without.stderr[-2000:]
    with_hook = run.format(f'site.addsitedir({str(installed)!r}); ')
    metrics = run_tool([sys.executable, '-c', with_hook, *args], work, env)
    assert 0 <= metrics[1] <= 100
