"""The host adapter: every host resolves its settings the same way, one remove_patch undoes
any patch, and no import circle joins mmtt's modules."""
import ast
from pathlib import Path

import pytest
import timm
import torch
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as PRE_MODELS
from mmseg.registry import MODELS as SEG_MODELS

import mmtt
import mmtt.models  # noqa: F401  (registers the backbones)
from mmtt.hosts import timm as tt

PACKAGE = Path(mmtt.__file__).parent


def seg_vit(**kw):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    cfg = dict(type='TokenVisionTransformer', img_size=(32, 32), patch_size=4, embed_dims=32,
               num_layers=4, num_heads=2, out_indices=(1, 3), **kw)
    model = SEG_MODELS.build(cfg)
    model.eval()
    return model


def pre_vit(**kw):
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    cfg = dict(type='TokenVisionTransformer', img_size=32, patch_size=8, out_type='cls_token',
               arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64), **kw)
    model = PRE_MODELS.build(cfg)
    model.eval()
    return model


REDUCE = dict(reduce_layers=(1, 2), token_recovery=dict(type='TokenRecovery'))


def image(size=32, b=2):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_pitome_takes_the_per_block_schedule_on_every_host():
    """PiToMe's authors set margin and protection per block; timm, mmseg and mmpretrain all
    give each reducing block its own (block 1 of 4: margin 0.5625, block 2: 0.375)."""
    t = dict(type='TokenTransform', method='pitome', keep_ratio=0.6)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=4, img_size=32)
    tt.apply_patch(model, method='pitome', keep_ratio=0.6, reduce_layers=(1, 2))
    hosts = {'timm': [b.token_transform for b in model.blocks],
             'mmseg': [layer.token_transform for layer in seg_vit(token_transform=t, **REDUCE).layers],
             'mmpretrain': [layer.token_transform for layer in pre_vit(token_transform=t, **REDUCE).layers]}
    for name, transforms in hosts.items():
        assert transforms[0] is None and transforms[3] is None, name
        assert [transforms[i].margin for i in (1, 2)] == [0.75 - 0.75 * 1 / 4, 0.75 - 0.75 * 2 / 4], name
        assert [transforms[i].protect for i in (1, 2)] == [False, True], name


@pytest.mark.parametrize('build', [seg_vit, pre_vit], ids=['mmseg', 'mmpretrain'])
def test_metric_is_a_setting_of_every_config_host_with_the_method_tables_default(build):
    """ToMe compares keys by default (its own code does) and metric='hidden' compares hidden
    states, on the mmseg ViT (and so DPT) as on mmpretrain and timm."""
    t = dict(type='TokenTransform', method='tome', keep_ratio=0.6)
    x = image()
    with torch.no_grad():
        default, keys, hidden = (build(token_transform=t, **REDUCE, **kw)(x)[-1]
                                 for kw in ({}, dict(metric='keys'), dict(metric='hidden')))
    assert torch.equal(default, keys) and not torch.allclose(keys, hidden)
    with pytest.raises(ValueError, match="metric='key'"):
        build(token_transform=t, **REDUCE, metric='key')


def test_swin_refuses_a_metric_it_cannot_honour():
    from mmdet.registry import MODELS as DET_MODELS
    from tiny_coco import TINY_SWIN, TINY_TT
    init_default_scope('mmdet')
    with pytest.raises(ValueError, match=r"^metric='keys'.*hidden states only"):
        DET_MODELS.build({**TINY_SWIN, **TINY_TT, 'type': 'TokenSwinTransformer', 'metric': 'keys'})


def test_tome_configs_say_which_features_they_compare():
    from mmengine.config import Config
    root = PACKAGE.parent / 'configs'
    for path in sorted(root.glob('*/*tome*.py')):
        cfg = Config.fromfile(str(path))
        assert cfg.model.backbone.get('metric') in ('hidden', 'keys'), path.name


def test_lvvit_accepts_the_layers_alias_as_timm_does():
    pytest.importorskip('tlt')
    from mmtt.hosts import lvvit
    torch.manual_seed(0)
    model = lvvit.LV_ViT(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, mlp_ratio=3.,
                         p_emb='4_2', skip_lam=2., return_dense=True, mix_token=True, num_classes=10).eval()
    lvvit.apply_patch(model, keep_ratio=0.5, layers=(1,))
    assert [b.token_transform is not None for b in model.blocks] == [False, True, False, False]


@pytest.mark.parametrize('build, host', [
    (seg_vit, 'mmseg.models.backbones.vit.VisionTransformer'),
    (pre_vit, 'mmpretrain.models.backbones.vision_transformer.VisionTransformer'),
], ids=['mmseg', 'mmpretrain'])
def test_remove_patch_turns_a_config_built_backbone_into_the_hosts_own(build, host):
    x = image()
    model = build(token_transform=dict(type='TokenTransform', keep_ratio=0.5), **REDUCE)
    plain = build()
    plain.load_state_dict(model.state_dict())
    assert mmtt.remove_patch(model) is model
    cls = type(model)
    assert f'{cls.__module__}.{cls.__name__}' == host
    assert all(not type(m).__name__.startswith('Token') for m in model.modules())
    assert not any('_mmtt' in key or 'token_' in key for m in model.modules() for key in vars(m))
    with torch.no_grad():
        for a, b in zip(model(x), mmtt.remove_patch(plain)(x)):
            assert torch.equal(a, b)


def test_remove_patch_refuses_a_model_with_no_host_class():
    from test_dpt import build_tiny
    model = build_tiny()
    with pytest.raises(ValueError, match='TokenHybridVisionTransformer.*reduce_layers=\\[\\]'):
        mmtt.remove_patch(model)


def _imports(path: Path):
    """Modules of mmtt that ``path`` imports (also under TYPE_CHECKING and in functions)."""
    module = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    if path.name == '__init__.py':
        module = package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition('.')[0]
            name = (f'{base}.{node.module}' if node.module else base) if node.level else node.module
            found.add(name)
            found.update(f'{name}.{alias.name}' for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return module, {name for name in found if name.startswith('mmtt')}


def test_no_import_circle_between_mmtt_modules():
    """Edges between mmtt's modules (package __init__ files left out: a package re-exporting its
    own modules is no circle) have no cycle."""
    files = {}
    for path in PACKAGE.rglob('*.py'):
        module, imported = _imports(path)
        if path.name != '__init__.py':
            files[module] = imported
    graph = {m: sorted(i for i in imported if i in files and i != m) for m, imported in files.items()}
    state = {}

    def visit(node, trail):
        state[node] = 'open'
        for nxt in graph[node]:
            if state.get(nxt) == 'open':
                raise AssertionError(' -> '.join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 'done'

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_the_transformers_host_refuses_recover_in_one_line():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mmtt.hosts import transformers as ht
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                             num_attention_heads=2, image_size=32, patch_size=8)).eval()
    with pytest.raises(ValueError, match=r'^recover=True: the transformers host hands the reduced tokens on'):
        ht.apply_patch(model, keep_ratio=0.5, reduce_layers=(1,), recover=True)


def test_one_remove_patch_undoes_every_apply_patch_host():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mmtt.hosts import transformers as ht
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=2, image_size=32, patch_size=8)).eval()
    vit = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=4, img_size=32).eval()
    for model, patch, run in ((clip, ht.apply_patch, lambda m, x: m(pixel_values=x).last_hidden_state),
                              (vit, tt.apply_patch, lambda m, x: m(x))):
        x = image()
        with torch.no_grad():
            ref = run(model, x)
        classes = [type(m) for m in model.modules()]
        patch(model, keep_ratio=0.5, reduce_layers=(1,))
        mmtt.remove_patch(model)
        assert [type(m) for m in model.modules()] == classes
        with torch.no_grad():
            assert torch.equal(run(model, x), ref)
