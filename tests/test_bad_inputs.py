"""Bad input across the public surfaces: a ValueError naming the key and value, or a tool that
exits non-zero with one line, never a hang, a silent wrong answer or a traceback."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS as SEG_MODELS
from tiny_seg import REPO, TINY_VIT, save_mmseg_checkpoint, write_config, write_tiny_ade20k

import mmtt.functional as TF
from mmtt import TokenTransform
from mmtt.hosts import timm as tt


def tokens(b=2, n=17, c=8):
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(0))


# --- values ---------------------------------------------------------------------------------

@pytest.mark.parametrize('tau', [float('inf'), 1e39, 3e38, float('nan'), None])
def test_tau_that_would_overflow_float32_is_refused(tau):
    x, s = tokens(), torch.rand(2, 17)
    # TokenTransform(tau=None) is the preset's tau (the paper's 150 without one).
    calls = [lambda: TF.transform_matrix(x, s, 5, 0.55, tau)] + ([lambda: TokenTransform(tau=tau)]
                                                                 if tau is not None else [])
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(f'tau={tau!r} must be a finite number > 0')):
            call()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_largest_accepted_tau_is_finite_in_every_dtype(dtype):
    x = tokens(n=40, c=16).to(dtype) * 30
    w, s = TF.transform_matrix(x, torch.rand(2, 40), 12, 0.55, 1e38)
    assert torch.isfinite(w).all() and torch.isfinite(s).all()


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.uint8])
def test_integer_tokens_are_refused_not_zeroed(dtype):
    x = (tokens() * 10).to(dtype)
    with pytest.raises(ValueError, match=f'x has dtype {dtype}'):
        TokenTransform(keep_ratio=0.5)(x, scores=torch.rand(2, 17))
    with pytest.raises(ValueError, match=f'x has dtype {dtype}'):
        TF.transform_matrix(x, torch.rand(2, 17), 5, 0.55, 150.0)
    with pytest.raises(ValueError, match=f'x has dtype {dtype}'):
        TF.transform_token_matrix(x, torch.rand(2, 17), 5, 0.55, 150.0, top_k=2)


@pytest.mark.parametrize('bad', [0.0, -1.0, float('nan'), float('inf')])
def test_non_positive_sizes_given_by_the_caller_are_refused(bad):
    sizes = torch.ones(2, 17)
    sizes[1, 3] = bad
    with pytest.raises(ValueError, match='sizes must be finite and > 0'):
        TokenTransform(keep_ratio=0.5)(tokens(), sizes, scores=torch.rand(2, 17))


def test_sizes_of_an_earlier_reduction_pass_unchecked_and_stay_valid():
    t = TokenTransform(keep_ratio=0.5)
    first = t(tokens(), num_prefix=1, scores=torch.rand(2, 17))
    second = t(first.tokens, first.sizes, num_prefix=1, scores=torch.rand(2, 9), validate_sizes=False)
    assert torch.isfinite(second.tokens).all() and (second.sizes > 0).all()


@pytest.mark.parametrize('cfg,needle', [
    (dict(kappa='0.5'), "kappa='0.5' must be a number"),
    (dict(kappa='0.5'), "kappa='0.5' must be a number"),
    (dict(keep_ratio=None), 'keep_ratio=None must be a number in (0, 1]'),
    (dict(keep_ratio=np.float32(1.5)), 'keep_ratio=1.5 must be a number in (0, 1]'),
    (dict(keep_ratio=True), 'keep_ratio=True'),
])
def test_bad_module_value_names_key_and_value(cfg, needle):
    with pytest.raises(ValueError) as info:
        TokenTransform(**cfg)
    assert needle in str(info.value)


def test_numpy_numbers_are_accepted_as_numbers():
    t = TokenTransform(keep_ratio=np.float32(0.7), kappa=np.float64(0.5), tau=np.float32(150))
    assert (t.keep_ratio, t.kappa, t.tau) == (pytest.approx(0.7), 0.5, 150.0)
    assert type(t.keep_ratio) is float
    out = t(tokens(n=21), num_prefix=np.int64(1), scores=torch.rand(2, 21))
    assert out.tokens.shape == (2, 1 + 14, 8)


@pytest.mark.parametrize('num_prefix', [1.5, '1', None])
def test_non_integer_num_prefix_is_named(num_prefix):
    with pytest.raises(ValueError, match=re.escape(f'num_prefix={num_prefix!r} must be an int')):
        TokenTransform(keep_ratio=0.5)(tokens(), num_prefix=num_prefix, scores=torch.rand(2, 17))


def test_tome_with_one_reducible_token_left_merges_nothing():
    t = TokenTransform(keep_ratio=0.5, method='tome')
    assert [t.num_keep(n) for n in (1, 2, 3, 4)] == [1, 1, 2, 2]
    x = tokens(n=1 + 1)
    assert t(x, num_prefix=1).tokens is x
    m = TF.tome_matrix(tokens(n=1), 1)
    assert torch.equal(m.apply(tokens(n=1)), tokens(n=1)) and torch.equal(m.sizes, torch.ones(2, 1))
    with pytest.raises(ValueError, match=r'num_keep=0 must be in \[1, 1\]'):
        TF.tome_matrix(tokens(n=1), 0)


def test_tome_at_every_layer_of_a_small_model_runs_down_to_one_token():
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=6, img_size=32).eval()
    tt.apply_patch(model, method='tome', keep_ratio=0.5, layers=range(6))   # 4 patches: 2, 1, 1...
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


# --- timm apply_patch -------------------------------------------------------------------------

def small_vit():
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=4, img_size=32).eval()


@pytest.mark.parametrize('kwargs,needle', [
    (dict(layers=3), 'layers=3 must be a sequence of 0-based block indices, e.g. (3,)'),
    (dict(layers=(1.7,)), 'layers=[1.7] must hold ints (0-based block indices), got 1.7'),
    (dict(layers=(1, 2.0)), 'got 2.0'),
    (dict(layers='12'), "layers='12' must be a sequence"),
    # nothing reduced, settings still checked
    (dict(layers=(), keep_ratio=5), 'keep_ratio=5 must be a number in (0, 1]'),
    (dict(layers=(), selection='bogus'), "selection='bogus'"),
    (dict(layers=(), kepp_ratio=1), 'unknown apply_patch key kepp_ratio=1'),
    (dict(layers=(), tau=float('inf')), 'tau=inf'),
    (dict(layers=(), kappa='0.5'), "kappa='0.5'"),
])
def test_apply_patch_names_the_bad_key_even_when_nothing_is_reduced(kwargs, needle):
    model = small_vit()
    with pytest.raises(ValueError) as info:
        tt.apply_patch(model, **kwargs)
    assert needle in str(info.value)
    assert type(model).__name__ == 'VisionTransformer'   # a failed patch leaves the model alone


def test_apply_patch_takes_numpy_layer_indices():
    model = tt.apply_patch(small_vit(), layers=np.array([1, 2]))
    assert [b.token_transform is not None for b in model.blocks] == [False, True, True, False]


# --- mmseg TokenVisionTransformer -------------------------------------------------------------

def seg_backbone(**kw):
    cfg = dict(TINY_VIT, type='TokenVisionTransformer', reduce_layers=(1, 2),
               token_transform=dict(type='TokenTransform', keep_ratio=0.6),
               token_recovery=dict(type='TokenRecovery'))
    cfg.update(kw)
    init_default_scope('mmseg')
    model = SEG_MODELS.build(cfg)
    model.eval()   # not chained: mmseg's ViT.train() returns None
    return model


@pytest.mark.parametrize('kw,needle', [
    (dict(reduce_layers=[], token_transform=dict(type='TokenTransform', kepp_ratio=0.5)),
     'unknown token_transform key kepp_ratio=0.5'),
    (dict(reduce_layers=[], token_transform=dict(type='TokenTransform', tau=float('inf'))), 'tau=inf'),
    (dict(token_recovery=dict(type='TokenRecovery', mdoe='nearest')), "unknown token_recovery key mdoe='nearest'"),
    (dict(reduce_layers=(1.5,)), 'reduce_layers=[1.5] must hold ints'),
    (dict(reduce_layers=2), 'reduce_layers=2 must be a sequence'),
])
def test_mmseg_backbone_config_is_checked_even_when_nothing_is_reduced(kw, needle):
    with pytest.raises(ValueError) as info:
        seg_backbone(**kw)
    assert needle in str(info.value)


@pytest.mark.parametrize('reduce_layers', [(), (1, 2)])
def test_mmseg_backbone_with_a_batch_of_zero_returns_empty_outputs_as_mmseg(reduce_layers):
    torch.manual_seed(0)
    init_default_scope('mmseg')
    ref = SEG_MODELS.build(dict(TINY_VIT, type='VisionTransformer', out_indices=(1, 3)))
    ref.eval()
    ours = seg_backbone(reduce_layers=reduce_layers, out_indices=(1, 3))
    x = torch.randn(0, 3, 64, 48)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert [o.shape for o in got] == [o.shape for o in expected] == [(0, 32, 4, 3)] * 2


# --- tools ------------------------------------------------------------------------------------

def run(args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1')
    done = subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return done.returncode, done.stdout, done.stderr.strip()


def assert_one_line_error(code, stderr, *needles):
    assert code != 0
    last = stderr.splitlines()[-1]
    assert 'Traceback' not in stderr, stderr[-3000:]
    for needle in needles:
        assert needle in last, stderr[-3000:]


def test_benchmark_reports_a_failed_child_instead_of_hanging():
    code, _, err = run([sys.executable, 'tools/benchmark.py', '--model', 'vit_tiny_patch16_224',
                        '--img-size', '32', '--layers', '20', '--batch', '1', '--warmup', '0',
                        '--repeats', '1', '--threads', '1'], timeout=240)
    assert_one_line_error(code, err, "benchmark.py: error: variant 'transform' failed",
                          'layers=[20] out of range for a model with 12 blocks')


@pytest.mark.parametrize('args,needle', [
    (['--model', 'vit_tiny_patch16_224', '--keep-ratio', '1.5'], '--keep-ratio 1.5 must be in (0, 1]'),
    (['--model', 'no_such_model'], '--model no_such_model: not a timm model name'),
    (['--model', 'vit_tiny_patch16_224', '--layers', '-1'], '--layers [-1]'),
    (['--config', 'c.py', '--shape', '0', '0'], '--shape 0 0: H and W must be >= 1'),
    (['--model', 'vit_tiny_patch16_224', '--batch', '0'], '--batch 0 must be >= 1'),
])
def test_benchmark_refuses_bad_options_up_front(args, needle, capsys):
    from mmtt.tools import benchmark
    with pytest.raises(SystemExit) as info:
        benchmark.parse_args(args)
    assert info.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize('shape', [['0', '0'], ['-4', '64'], ['1', '2', '3']])
def test_get_flops_refuses_bad_shapes_in_one_line(shape, capsys):
    from mmtt.tools import get_flops
    with pytest.raises(SystemExit) as info:
        get_flops.main([str(REPO / 'configs/segmenter/segmenter_tt_ade20k.py'), '--shape', *shape])
    assert info.value.code == 2 and '--shape' in capsys.readouterr().err.splitlines()[-1]


def test_get_flops_missing_config_is_one_line():
    code, _, err = run([sys.executable, 'tools/get_flops.py', 'configs/no_such.py'])
    assert_one_line_error(code, err, 'get_flops.py: error:', 'no_such.py')


@pytest.fixture(scope='module')
def seg_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bad_ckpt')
    write_tiny_ade20k(tmp / 'data')
    ckpt = save_mmseg_checkpoint(tmp)
    config = write_config(tmp, 'reduced', dict(TINY_VIT, type='TokenVisionTransformer', reduce_layers=(1,),
                                              token_transform=dict(type='TokenTransform', keep_ratio=0.6),
                                              token_recovery=dict(type='TokenRecovery')))
    other = dict(torch.load(ckpt, weights_only=False))   # another model: a wider backbone
    other['state_dict'] = {k: (torch.zeros(*v.shape[:-1], 48) if k.startswith('backbone.') and v.dim() > 1 else v)
                           for k, v in other['state_dict'].items()}
    torch.save(other, tmp / 'other.pth')
    torch.save({k: v for k, v in other['state_dict'].items() if not k.startswith('backbone.layers.3')},
               tmp / 'missing.pth')
    (tmp / 'corrupt.pth').write_bytes(ckpt.read_bytes()[:500])
    (tmp / 'text.pth').write_text('not a checkpoint')
    torch.save([1, 2, 3], tmp / 'list.pth')
    return tmp, config, ckpt


@pytest.mark.parametrize('name,needle', [
    ('absent.pth', 'absent.pth: no such file'),
    ('corrupt.pth', 'corrupt.pth cannot be read, corrupt or not a PyTorch file'),
    ('text.pth', 'text.pth cannot be read'),
    ('list.pth', 'list.pth is not a model checkpoint: it holds a list'),
    ('other.pth', "does not fit the model's backbone"),
    ('missing.pth', 'keys missing (e.g. backbone.layers.3.'),
])
def test_tools_test_bad_checkpoint_fails_in_one_line(seg_files, name, needle):
    from mmtt.tools import test as test_tool
    tmp, config, _ = seg_files
    with pytest.raises(SystemExit) as info:
        test_tool.main([str(config), str(tmp / name), '--work-dir', str(tmp / 'wd')])
    message = str(info.value.code)
    assert needle in message and '\n' not in message


def test_tools_test_with_another_models_checkpoint_exits_non_zero_unless_non_strict(seg_files):
    tmp, config, _ = seg_files
    base = [sys.executable, 'tools/test.py', config, tmp / 'other.pth', '--work-dir', tmp / 'wd_other']
    code, _, err = run(base)
    assert_one_line_error(code, err, 'test.py: error:', '--non-strict', 'of another shape')
    code, out, err = run(base + ['--non-strict'])
    assert code == 0 and 'mIoU' in out + err, err[-3000:]


def test_dist_test_missing_checkpoint_is_one_line(seg_files):
    tmp, config, _ = seg_files
    code, _, err = run(['bash', 'tools/dist_test.sh', config, tmp / 'absent.pth', '2'])
    assert_one_line_error(code, err, 'dist_test.sh: error:', 'absent.pth: no such file')
    assert len(err.splitlines()) == 1


def test_fidelity_with_every_point_invalid_fails_in_one_line(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((28, 28, 3), 128, dtype=np.uint8)).save(tmp_path / 'grey.png')
    out = tmp_path / 'fid.json'
    code, _, err = run([sys.executable, 'tools/fidelity.py', '--images', tmp_path, '--size', '28',
                        '--methods', 'tome', '--keep-ratios', '0.3', '--out-json', out, '--out-png', ''])
    assert_one_line_error(code, err, 'fidelity.py: error: every point was refused',
                          "keep_ratio=0.3 is below 0.5, which method='tome' cannot reach")
    assert not out.exists()
    code, _, err = run([sys.executable, 'tools/fidelity.py', '--images', tmp_path / 'none'])
    assert_one_line_error(code, err, 'fidelity.py: error: --images', 'no such directory')


@pytest.mark.parametrize('content,needle', [
    ('random', 'is not a PyTorch checkpoint holding only tensors'),
    ('mmengine', 'is an MMEngine checkpoint (already converted?)'),
    ('tensor', 'holds a Tensor, not a state dict'),
    ('absent', 'no such file'),
])
def test_convert_dpt_checkpoint_names_a_file_that_is_not_dpts(tmp_path, content, needle):
    src = tmp_path / f'{content}.pt'
    if content == 'random':
        src.write_bytes(bytes(range(256)) * 8)
    elif content == 'mmengine':
        from mmengine.logging import HistoryBuffer
        torch.save(dict(state_dict={'backbone.w': torch.zeros(1)}, message_hub=dict(b=HistoryBuffer())), src)
    elif content == 'tensor':
        torch.save(torch.zeros(3), src)
    code, _, err = run([sys.executable, 'tools/convert_dpt_checkpoint.py', src, tmp_path / 'out.pth'])
    assert_one_line_error(code, err, 'convert_dpt_checkpoint.py: error:', f'{src}', needle)
    assert not (tmp_path / 'out.pth').exists()
