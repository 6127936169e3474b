"""Token Transforming in mmpretrain's ViT, DeiT (distilled too) and T2T-ViT, and in tlt's LV-ViT."""
import os
import re
import subprocess
import sys
import threading

import pytest
import torch
from mmengine.config import Config
from tiny_cls import (
    CONFIGS,
    REPO,
    build_classifier,
    input_size,
    save_checkpoint,
    write_tiny_config,
    write_tiny_imagenet,
)

from mmtt.functional import size_bias
from mmtt.hosts.adapter import TokenState
from mmtt.hosts.mmpretrain import TokenMultiheadAttention

ALL_CONFIGS = sorted(CONFIGS.glob('*.py'))
UNMODIFIED = ('ps-vit-b14_in1k.py',)   # baselines: the same model with no layer reducing
# One config per host class and output type: ViT (class token), distilled DeiT, MAE ViT-H
# (average pooling, no final norm), T2T-ViT.
HOSTS = [CONFIGS / name for name in ('deit-s_tt_in1k.py', 'deit-s-distilled_tt_in1k.py',
                                     'mae_vit-h14_tt_in1k.py', 't2t-vit-t-14_tt_in1k.py')]
METHODS = ('transform', 'tome', 'evit', 'prune')


def ids(paths):
    return [p.stem for p in paths]


def images(config, batch=2, seed=0):
    size = input_size(config)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny(tmp_path, config, **backbone):
    return write_tiny_config(tmp_path, config, name=config.stem, backbone=backbone or None)


def logits(model, x):
    with torch.no_grad():
        return model(x, mode='tensor')


@pytest.mark.parametrize('config', ALL_CONFIGS, ids=ids(ALL_CONFIGS))
def test_every_config_builds_tiny_and_classifies_an_image(tmp_path, config):
    cfg = Config.fromfile(str(config))
    assert cfg.model.backbone.type.startswith('Token')
    assert bool(cfg.model.backbone.reduce_layers) != (config.name in UNMODIFIED)
    model = build_classifier(tiny(tmp_path, config))
    assert model.backbone.token_transform.method == cfg.model.backbone.token_transform.method
    size = input_size(config)
    image = torch.randint(0, 256, (3, size + 8, size), dtype=torch.uint8)[:, :size]
    data = model.data_preprocessor({'inputs': [image], 'data_samples': None})
    with torch.no_grad():
        sample, = model(**data, mode='predict')
    assert sample.pred_score.shape == (10,) and 0 <= int(sample.pred_label) < 10


@pytest.mark.parametrize('config', HOSTS, ids=ids(HOSTS))
def test_keep_one_and_no_reduction_equal_the_unmodified_mmpretrain_model_exactly(tmp_path, config):
    path = tiny(tmp_path, config)
    torch.manual_seed(0)
    host = build_classifier(path, host=True)
    x = images(config)
    expected = logits(host, x)
    for backbone in (dict(reduce_layers=[]), dict(token_transform=dict(keep_ratio=1.0))):
        model = build_classifier(path, **backbone)
        model.load_state_dict(host.state_dict(), strict=True)
        assert torch.equal(logits(model, x), expected), backbone
    # Reduced, the same weights give another (finite) output.
    model = build_classifier(path)
    model.load_state_dict(host.state_dict(), strict=True)
    reduced = logits(model, x)
    assert torch.isfinite(reduced).all() and not torch.equal(reduced, expected)


@pytest.mark.parametrize('name', ['deit-s_tt_in1k.py', 'deit-s-distilled_tt_in1k.py',
                                  't2t-vit-t-14_tt_in1k.py'])
def test_a_random_full_size_mmpretrain_state_dict_loads_strictly(name):
    config = CONFIGS / name
    torch.manual_seed(0)
    host = build_classifier(config, host=True)
    model = build_classifier(config)
    assert list(model.state_dict()) == list(host.state_dict())
    model.load_state_dict(host.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), host.state_dict().values()))


@pytest.mark.parametrize('config', HOSTS, ids=ids(HOSTS))
@pytest.mark.parametrize('method', METHODS)
def test_every_method_reduces_and_keeps_the_prefix_tokens(tmp_path, config, method):
    model = build_classifier(tiny(tmp_path, config, out_type='raw', token_transform=dict(
        method=method, keep_ratio=0.5)))
    backbone = model.backbone
    prefix = backbone.num_extra_tokens
    assert backbone.token_transform.method == method
    x = images(config)
    with torch.no_grad():
        raw, = backbone(x)
    # 16 patches, halved after layers 1 and 2: 16 -> 8 -> 4 (EViT keeps 7 plus the fused one).
    assert raw.shape == (2, prefix + 4, 32)
    recovering = build_classifier(tiny(tmp_path, config, out_type='raw', token_transform=dict(
        method=method, keep_ratio=0.5), token_recovery=dict(type='TokenRecovery')))
    recovering.backbone.load_state_dict(backbone.state_dict(), strict=True)
    with torch.no_grad():
        full, = recovering.backbone(x)
    assert full.shape == (2, prefix + 16, 32)
    assert torch.equal(full[:, :prefix], raw[:, :prefix])   # prefix tokens are never merged


def test_tome_compares_keys_by_default_and_metric_is_a_setting(tmp_path):
    config = CONFIGS / 'deit-s_tome_in1k.py'
    assert build_classifier(tiny(tmp_path, config)).backbone.layers[1]._mmtt.keys
    hidden = build_classifier(tiny(tmp_path, config, metric='hidden'))
    assert not hidden.backbone.layers[1]._mmtt.keys
    assert not build_classifier(tiny(tmp_path, CONFIGS / 'deit-s_tt_in1k.py')).backbone.layers[1]._mmtt.keys


@pytest.mark.parametrize('name', ['mae_vit-h14_tt_in1k.py', 't2t-vit-t-14_tt_in1k.py'])
def test_average_pooling_counts_each_token_size_times(tmp_path, name):
    config = CONFIGS / name
    backbone = build_classifier(tiny(tmp_path, config, out_type='avg_featmap')).backbone
    x = torch.randn(2, 1 + 3, 32)
    sizes = torch.tensor([[1.0, 1.0, 2.0, 5.0], [1.0, 4.0, 1.0, 3.0]])
    pooled = backbone._format_tokens(x, TokenState(sizes=sizes), (2, 2))
    mean = (x[:, 1:] * sizes[:, 1:, None]).sum(1) / sizes[:, 1:].sum(1, keepdim=True)
    norm = backbone.ln2 if 'vit-h' in name else torch.nn.Identity()   # T2T pools without a norm
    torch.testing.assert_close(pooled, norm(mean))
    # Before any reduction: the host's own mean.
    torch.testing.assert_close(backbone._format_tokens(x, TokenState(), (1, 3)),
                               norm(x[:, 1:].mean(1)))


@pytest.mark.parametrize('name', ['deit-s_tt_in1k.py', 't2t-vit-t-14_tt_in1k.py'])
def test_layers_after_a_reduction_keep_sdpa_with_the_size_bias(tmp_path, sdpa_calls, name):
    config = CONFIGS / name
    # Scores of ranks from every 2nd query row: every layer, reducing or not, runs SDPA.
    model = build_classifier(tiny(tmp_path, config, token_transform=dict(score_stride=2)))
    with torch.no_grad():
        model.backbone(images(config))
    # 4 encoder layers (T2T's token-to-token layers run mmpretrain's Python attention, as the
    # host): log s as the mask from the reduction after layer 1 on.
    assert sdpa_calls == [False, False, True, True]


def test_t2t_reduced_layers_reproduce_mmpretrain_attention(tmp_path):
    # mmpretrain 1.2.0 runs T2T's attention in Python with `scale` as a divisor; the restated
    # attention (SDPA) must compute the same thing.
    model = build_classifier(tiny(tmp_path, CONFIGS / 't2t-vit-t-14_tt_in1k.py'))
    attn = model.backbone.encoder[0].attn
    assert isinstance(attn, TokenMultiheadAttention) and attn._mmtt_scale == pytest.approx(16 ** 0.5)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        host = super(TokenMultiheadAttention, attn).forward(x)
        torch.testing.assert_close(attn(x, attn_mask=size_bias(torch.ones(2, 17), x.dtype)), host,
                                   rtol=1e-5, atol=1e-5)


def test_threads_share_a_reduced_model(tmp_path):
    config = CONFIGS / 'deit-s-distilled_tt_in1k.py'
    model = build_classifier(tiny(tmp_path, config, token_transform=dict(keep_ratio=0.5)))
    inputs = [images(config, seed=i) for i in range(4)]
    expected = [logits(model, x) for x in inputs]
    results = [None] * 4

    def run(i):
        results[i] = logits(model, inputs[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(results, expected))


def test_checkpointed_layers_give_the_plain_gradients(tmp_path):
    import torch.utils.checkpoint as cp
    config = CONFIGS / 'deit-s_tt_in1k.py'
    backbone = build_classifier(tiny(tmp_path, config, token_transform=dict(keep_ratio=0.5))).backbone
    x = torch.randn(2, 1 + 16, 32, requires_grad=True)

    def run(checkpoint):
        h, state = x, TokenState()
        for layer in backbone.layers:
            h, state = (cp.checkpoint(layer, h, state, use_reentrant=False) if checkpoint
                        else layer(h, state))
        return torch.autograd.grad(h.sum(), x)[0]
    torch.testing.assert_close(run(True), run(False))


BAD = [
    (dict(reduce_layers=(1, 9)), r'reduce_layers=\[9\] out of range for num_layers=4'),
    (dict(token_transform=dict(keep_ratio=1.5)), r'keep_ratio=1\.5'),
    (dict(token_transform=dict(kapa=0.5)), r'kapa'),
    (dict(token_transform=dict(method='merge')), r"method='merge'"),
    (dict(metric='values'), r"metric='values'"),
    (dict(token_transform=None), r'reduce_layers is set but token_transform is None'),
    (dict(out_type='featmap'), r"token_recovery is required: out_type='featmap'"),
    (dict(token_transform=dict(method='evit'), with_cls_token=False, out_type='avg_featmap'),
     r"method='evit'.*with_cls_token=False"),
]


@pytest.mark.parametrize('backbone, message', BAD, ids=[m for _, m in BAD])
def test_bad_settings_name_the_key(tmp_path, backbone, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(tiny(tmp_path, CONFIGS / 'deit-s_tt_in1k.py', **backbone))


def test_tools_test_evaluates_a_tiny_imagenet_folder_and_prints_top1(tmp_path):
    write_tiny_imagenet(tmp_path / 'data')
    config = write_tiny_config(tmp_path, CONFIGS / 'deit-s_tt_in1k.py', data_root=tmp_path / 'data')
    ckpt = save_checkpoint(build_classifier(config, host=True), tmp_path / 'deit_tiny.pth')
    env = dict(PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / 'tools/test.py'), str(config), str(ckpt),
                           '--out', str(tmp_path / 'preds.pkl'), '--work-dir', str(tmp_path / 'work')],
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS='1', **env),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    top1, top5 = map(float, re.findall(r'accuracy/top1: ([\d.]+)\s+accuracy/top5: ([\d.]+)', out)[-1])
    assert 0 <= top1 <= top5 <= 100
    assert (tmp_path / 'preds.pkl').is_file()


def test_tools_test_refuses_a_checkpoint_of_another_backbone(tmp_path):
    write_tiny_imagenet(tmp_path / 'data')
    config = write_tiny_config(tmp_path, CONFIGS / 'deit-s_tt_in1k.py', data_root=tmp_path / 'data')
    other = build_classifier(config, host=True, arch=dict(embed_dims=32, num_layers=3, num_heads=2,
                                                          feedforward_channels=64))
    ckpt = save_checkpoint(other, tmp_path / 'other.pth')
    with pytest.raises(SystemExit, match='does not fit the model'):
        from mmtt.tools.test import main
        main([str(config), str(ckpt), '--work-dir', str(tmp_path / 'work')])


@pytest.mark.parametrize('name, full, reduced', [('deit-s_tt_in1k.py', 4.61, 3.02),
                                                  ('t2t-vit-t-14_tt_in1k.py', 6.11, 4.34)])
def test_gflops_of_the_paper_operating_points(name, full, reduced):
    from mmtt.tools.get_flops import main
    result = main([str(CONFIGS / name), '--shape', '224', '224'])
    assert round(result['gflops_unmodified'], 2) == full and round(result['gflops'], 2) == reduced


def test_import_survives_transformers_5():
    """mmpretrain 1.2.0's multimodal models fail to import under transformers 5; mmtt imports
    mmpretrain without them then (placeholders, as without transformers)."""
    code = """
import importlib.metadata as metadata
real = metadata.version
metadata.version = lambda p: '5.0.0' if p == 'transformers' else real(p)
import mmtt, mmpretrain.utils.dependency as dependency
from mmpretrain.registry import MODELS
assert not dependency.WITH_MULTIMODAL
assert MODELS.get('TokenVisionTransformer') is not None and MODELS.get('VisionTransformer') is not None
print('ok')
"""
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stderr[-2000:]


# LV-ViT (tlt 0.2.0): a patch in the manner of mmtt.hosts.timm.
@pytest.fixture
def lvvit():
    pytest.importorskip('tlt')
    from mmtt.hosts import lvvit
    return lvvit


def tiny_lvvit(lvvit, seed=0):
    torch.manual_seed(seed)
    model = lvvit.LV_ViT(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2,
                         mlp_ratio=3., p_emb='4_2', skip_lam=2., return_dense=True,
                         mix_token=True, num_classes=10)
    return model.eval()


def test_lvvit_keep_one_is_exact_and_remove_patch_restores(lvvit):
    model = tiny_lvvit(lvvit)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        keys = list(model.state_dict())
        lvvit.apply_patch(model, keep_ratio=1.0, reduce_layers=(1, 2))
        assert torch.equal(model(x), expected) and list(model.state_dict()) == keys
        lvvit.remove_patch(model)
        lvvit.apply_patch(model, keep_ratio=0.5, reduce_layers=(1, 2))
        reduced = model(x)
        assert reduced.shape == expected.shape and not torch.equal(reduced, expected)
        lvvit.remove_patch(model)
        assert type(model) is lvvit.LV_ViT and torch.equal(model(x), expected)


def test_lvvit_refuses_other_models_a_patched_one_and_foreign_blocks(lvvit):
    with pytest.raises(ValueError, match='model must be a tlt LV_ViT, got Linear'):
        lvvit.apply_patch(torch.nn.Linear(2, 2))
    model = lvvit.apply_patch(tiny_lvvit(lvvit), reduce_layers=(1,))
    with pytest.raises(ValueError, match='already patched'):
        lvvit.apply_patch(model, reduce_layers=(1,))
    model = tiny_lvvit(lvvit)
    model.blocks[2].__class__ = type('MyBlock', (lvvit.Block,), {})
    with pytest.raises(ValueError, match='block 2 is MyBlock with Attention; apply_patch supports tlt Block'):
        lvvit.apply_patch(model, reduce_layers=(1,))


@pytest.mark.parametrize('method', METHODS)
def test_lvvit_every_method_and_recovery(lvvit, method):
    model = lvvit.apply_patch(tiny_lvvit(lvvit), method=method, keep_ratio=0.5, reduce_layers=(1, 2))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 1 + 4, 32)
        assert torch.isfinite(model(x)).all()
    recovered = lvvit.apply_patch(tiny_lvvit(lvvit), method=method, keep_ratio=0.5,
                                  reduce_layers=(1, 2), recover=True)
    with torch.no_grad():
        assert recovered.forward_features(x).shape == (2, 1 + 16, 32)


def test_lvvit_bad_settings_name_the_key(lvvit):
    with pytest.raises(ValueError, match=r'reduce_layers=\[7\]'):
        lvvit.apply_patch(tiny_lvvit(lvvit), reduce_layers=(1, 7))
    with pytest.raises(ValueError, match='kapa'):
        lvvit.apply_patch(tiny_lvvit(lvvit), reduce_layers=(1,), kapa=0.5)
    with pytest.raises(ValueError, match='preset'):
        lvvit.apply_patch(tiny_lvvit(lvvit), preset='lvvit-x')


def test_lvvit_s_gflops_preset(lvvit):
    from tlt.models import lvvit_s

    from mmtt.analysis import count_flops
    model = lvvit_s().eval()
    x = torch.randn(1, 3, 224, 224)
    assert round(count_flops(model, (x,)).gflops, 2) == 6.57
    lvvit.apply_patch(model, preset='lvvit-s/0.7')
    assert round(count_flops(model, (x,)).gflops, 2) == 4.54
