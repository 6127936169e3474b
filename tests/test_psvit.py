"""PS-ViT (mmtt.models.psvit) and its mmpretrain backbone with Token Transforming."""
import math

import pytest
import torch
from tiny_cls import CONFIGS, TINY, build_classifier, write_tiny_config

from mmtt.models.psvit import PSViT, convert_to_mmpretrain, progressive_sample, ps_vit_b_14, ps_vit_ti_14

CONFIG = CONFIGS / 'ps-vit-b14_tt_in1k.py'
UNMODIFIED = CONFIGS / 'ps-vit-b14_in1k.py'
# Tiny PS-ViT: 8x8 map, 4x4 points, 2 sampling iterations, 4 plain layers.
TINY_KW = dict(TINY['psvit'])


def tiny(**kwargs) -> PSViT:
    torch.manual_seed(0)
    model = PSViT(num_classes=10, **{**TINY_KW, **kwargs}).eval()
    for layer in model.ps_layers:   # non-zero offsets, so the sampling moves
        if layer.offset_layer is not None:
            torch.nn.init.normal_(layer.offset_layer.weight, std=0.5)
    return model


def images(batch=2, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# The authors' CUDA kernel, restated in float64 scalars: sample at (y, x) = point + gamma * offset;
# zero at or beyond one pixel outside the map; each corner read only inside the map.
def kernel_reference(feature, point, offset, gamma):
    f = feature.double()
    batch, channels, height, width = f.shape
    out = torch.zeros(batch, point.shape[1], channels, dtype=torch.float64)
    for b in range(batch):
        for p in range(point.shape[1]):
            y = float(point[b, p, 0]) + float(offset[b, p, 0]) * gamma
            x = float(point[b, p, 1]) + float(offset[b, p, 1]) * gamma
            if y <= -1 or y >= height or x <= -1 or x >= width:
                continue
            y0, x0 = math.floor(y), math.floor(x)
            y1, x1 = y0 + 1, x0 + 1
            ly, lx = y - y0, x - x0
            zero = torch.zeros(channels, dtype=torch.float64)
            v1 = f[b, :, y0, x0] if y0 >= 0 and x0 >= 0 else zero
            v2 = f[b, :, y0, x1] if y0 >= 0 and x1 <= width - 1 else zero
            v3 = f[b, :, y1, x0] if y1 <= height - 1 and x0 >= 0 else zero
            v4 = f[b, :, y1, x1] if y1 <= height - 1 and x1 <= width - 1 else zero
            out[b, p] = ((1 - ly) * (1 - lx) * v1 + (1 - ly) * lx * v2 + ly * (1 - lx) * v3
                         + ly * lx * v4)
    return out


@pytest.mark.parametrize('gamma', [1.0, 0.3])
def test_sampler_matches_the_authors_kernel_at_random_points_borders_and_outside(gamma):
    g = torch.Generator().manual_seed(1)
    height, width = 7, 9
    feature = torch.randn(2, 5, height, width, generator=g)
    # Random points over and around the map (up to 2 pixels outside), random offsets.
    scale = torch.tensor([height + 4.0, width + 4.0])
    point = torch.rand(2, 150, 2, generator=g) * scale - 2
    offset = torch.randn(2, 150, 2, generator=g)
    # Points exactly on the borders, on pixel centres, half a pixel out, and one pixel out.
    ys = [-1.0, -0.5, 0.0, 2.0, 3.25, height - 1.0, height - 0.5, float(height), height + 0.5]
    xs = [-1.0, -0.5, 0.0, 4.0, 5.75, width - 1.0, width - 0.5, float(width), -1.5]
    border = torch.tensor([[y, x] for y in ys for x in xs]).expand(2, -1, -1)
    point = torch.cat([point, border], dim=1)
    offset = torch.cat([offset, torch.zeros_like(border)], dim=1)
    expected = kernel_reference(feature, point, offset, gamma)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        got = progressive_sample(feature.to(dtype), point.to(dtype), offset.to(dtype), gamma)
        diff = (got.double() - expected).abs().max().item()
        print(f'{dtype} gamma={gamma}: max |grid_sample - kernel| = {diff:.3g}')
        assert got.shape == (2, point.shape[1], 5) and diff < tol
    assert (expected[:, -len(xs) * len(ys):] == 0).any()   # some border points read nothing


def authors_keys(embed=384, iters=4, depth=14, mlp=3, stem=(256, 384), num_points=196, classes=1000):
    """Key -> shape of the authors' PSViT state dict, from their module names."""
    def linear(name, out, inp, bias=True):
        return {f'{name}.weight': (out, inp), **({f'{name}.bias': (out,)} if bias else {})}

    def bn(name, c):
        return {f'{name}.weight': (c,), f'{name}.bias': (c,), f'{name}.running_mean': (c,),
                f'{name}.running_var': (c,), f'{name}.num_batches_tracked': ()}

    def ln(name, c):
        return {f'{name}.weight': (c,), f'{name}.bias': (c,)}

    def layer(p):
        return {**ln(f'{p}.norm1', embed), **linear(f'{p}.attn.qkv', 3 * embed, embed, bias=False),
                **linear(f'{p}.attn.proj', embed, embed), **ln(f'{p}.norm2', embed),
                **linear(f'{p}.mlp.fc1', mlp * embed, embed), **linear(f'{p}.mlp.fc2', embed, mlp * embed)}

    keys = {'cls_token': (1, 1, embed), 'point_coord': (1, num_points, 2),
            **linear('pos_layer', embed, 2), 'stem.0.weight': (64, 3, 7, 7), **bn('stem.1', 64)}
    previous = 64
    for i, c in enumerate(stem):
        p = f'stem.{4 + i}'
        keys.update({f'{p}.conv1.weight': (64, previous, 1, 1), **bn(f'{p}.bn1', 64),
                     f'{p}.conv2.weight': (64, 64, 3, 3), **bn(f'{p}.bn2', 64),
                     f'{p}.conv3.weight': (c, 64, 1, 1), **bn(f'{p}.bn3', c)})
        if c != previous:
            keys.update({f'{p}.downsample.0.weight': (c, previous, 1, 1), **bn(f'{p}.downsample.1', c)})
        previous = c
    for i in range(iters):
        keys.update(layer(f'ps_layers.{i}.transformer_layer'))
        keys.update(linear(f'ps_layers.{i}.position_layer', embed, 2))
        if i < iters - 1:
            keys.update(linear(f'ps_layers.{i}.offset_layer', 2, embed))
    for i in range(depth - iters):
        keys.update(layer(f'trans_layers.{i}'))
    keys.update({**ln('norm', embed), **linear('head', classes, embed)})
    return keys


def random_state(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.tensor(3) if k.endswith('num_batches_tracked')
                 else torch.rand(s, generator=g) + 0.5 if 'running_var' in k
                 else torch.randn(s, generator=g) * 0.05) for k, s in keys.items()}
    # The authors share one position layer among the sampling iterations: one value, many keys.
    for k in keys:
        if '.position_layer.' in k:
            state[k] = state['pos_layer.' + k.rsplit('.', 1)[-1]]
    return state


def test_b14_has_21_3_m_parameters_and_the_authors_state_dict_loads_strictly():
    model = ps_vit_b_14()
    count = sum(p.numel() for p in model.parameters())
    ti = sum(p.numel() for p in ps_vit_ti_14().parameters())
    print(f'PS-ViT-B/14: {count:,} parameters; PS-ViT-Ti/14: {ti:,}')
    assert round(count / 1e6, 1) == 21.3 and round(ti / 1e6, 1) == 4.8
    # Initial points: cell centres of a 14x14 grid on the 56x56 map, (y, x), x outer, y inner.
    i, j = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing='ij')
    assert torch.equal(model.point_coord, torch.stack([4 * j + 2, 4 * i + 2], -1).reshape(1, 196, 2))
    keys = authors_keys()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    state = random_state(keys)
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # The position layer is one module shared by the sampling iterations, as the authors'.
    assert model.ps_layers[2].position_layer is model.pos_layer


def test_the_converted_authors_checkpoint_gives_the_classifier_the_plain_models_logits(tmp_path):
    keys = authors_keys(embed=32, iters=2, depth=6, mlp=3, stem=(32,), num_points=16, classes=10)
    state = random_state(keys, seed=3)
    model = tiny()
    model.load_state_dict(state, strict=True)
    classifier = build_classifier(write_tiny_config(tmp_path, CONFIG, name='ps-vit', backbone=dict(
        reduce_layers=[])))
    classifier.load_state_dict(convert_to_mmpretrain({'state_dict': state}), strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(classifier(x, mode='tensor'), model(x), rtol=0, atol=1e-6)


def test_output_shapes():
    x = images()
    with torch.no_grad():
        assert tiny()(x).shape == (2, 10)
        assert tiny(out_type='raw').forward_features(x).shape == (2, 17, 32)
        reduced = tiny(out_type='raw', token_transform=dict(type='TokenTransform', keep_ratio=0.5),
                       reduce_layers=(1, 2))
        assert reduced.forward_features(x).shape == (2, 1 + 4, 32)
        recovering = tiny(out_type='raw', token_transform=dict(type='TokenTransform', keep_ratio=0.5),
                          reduce_layers=(1, 2), token_recovery=dict(type='TokenRecovery'))
        assert recovering.forward_features(x).shape == (2, 17, 32)


@pytest.mark.parametrize('method', ['transform', 'tome', 'evit', 'prune'])
def test_the_reduction_happens_in_the_chosen_plain_layers(method):
    model = tiny(token_transform=dict(type='TokenTransform', method=method, keep_ratio=0.5),
                 reduce_layers=(1, 2))
    entering = []
    for layer in list(model.ps_layers) + list(model.trans_layers):
        block = getattr(layer, 'transformer_layer', layer)
        block.register_forward_pre_hook(lambda m, args: entering.append(args[0].shape[1]))
    with torch.no_grad():
        logits = model(images())
    # Sampling iterations: 16 points; plain layers: class token + 16, halved after layers 1, 2.
    assert entering == [16, 16, 17, 17, 9, 5] and torch.isfinite(logits).all()


def test_layers_after_a_reduction_keep_sdpa_with_the_size_bias(sdpa_calls):
    # score_stride=2: the reducing layer's scores come from every 2nd query row, through SDPA too.
    model = tiny(token_transform=dict(type='TokenTransform', keep_ratio=0.5, score_stride=2),
                 reduce_layers=(1,))
    with torch.no_grad():
        model(images())
    # 2 sampling iterations and plain layers 0, 1 unmasked; log s as the mask after the reduction.
    assert sdpa_calls == [False, False, False, False, True, True]


def test_reduction_off_equals_the_unmodified_model_exactly():
    plain = tiny()
    x = images()
    with torch.no_grad():
        expected = plain(x)
        for kwargs in (dict(reduce_layers=[]), dict(token_transform=dict(type='TokenTransform', keep_ratio=1.0),
                                                    reduce_layers=(0, 1, 2, 3))):
            model = tiny(**{'token_transform': dict(type='TokenTransform', keep_ratio=0.5), **kwargs})
            model.load_state_dict(plain.state_dict(), strict=True)
            assert torch.equal(model(x), expected), kwargs
        model = tiny(token_transform=dict(type='TokenTransform', keep_ratio=0.5), reduce_layers=(1, 2))
        reduced = model(x)
    assert torch.isfinite(reduced).all() and not torch.equal(reduced, expected)


@pytest.mark.parametrize('config', [CONFIG, UNMODIFIED], ids=['tt', 'unmodified'])
def test_the_configs_build_tiny_and_classify(tmp_path, config):
    model = build_classifier(write_tiny_config(tmp_path, config, name=config.stem, backbone=dict(
        reduce_layers=[] if config == UNMODIFIED else (1, 2))))
    assert type(model.backbone).__name__ == 'TokenPSViT'
    assert model.backbone.reduce_layers == (() if config == UNMODIFIED else (1, 2))
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    data = model.data_preprocessor({'inputs': [image, image], 'data_samples': None})
    with torch.no_grad():
        samples = model(**data, mode='predict')
    assert len(samples) == 2 and samples[0].pred_score.shape == (10,)


def test_grid_sample_is_counted_as_four_flops_per_sample():
    from mmtt.analysis.flops import count_flops

    class Sample(torch.nn.Module):
        def forward(self, feature, point):
            return progressive_sample(feature, point, torch.zeros_like(point))
    report = count_flops(Sample(), (torch.randn(2, 8, 6, 6), torch.rand(2, 5, 2) * 5))
    assert report.total == 4 * 2 * 8 * 5 and 'aten::grid_sampler' not in report.uncounted


def test_b14_gflops_at_224_are_the_papers():
    from mmtt.tools.get_flops import main
    result = main([str(CONFIG), '--shape', '224', '224'])
    assert round(result['gflops_unmodified'], 2) == 5.40 and round(result['gflops'], 2) == 3.69
    assert abs(result['gflops_unmodified'] - 5.4) < 0.1 and abs(result['gflops'] - 3.7) < 0.1


BAD = [
    (dict(reduce_layers=(1, 9)), r'reduce_layers=\[9\] out of range for 4 trans_layers'),
    (dict(token_transform=dict(type='TokenTransform', keep_ratio=1.5)), r'keep_ratio=1\.5'),
    (dict(token_transform=dict(type='TokenTransform', kapa=0.5)), r'kapa'),
    (dict(token_transform=None), r'reduce_layers is set but token_transform is None'),
    (dict(metric='values'), r"metric='values'"),
    (dict(out_type='featmap'), r"out_type='featmap'"),
    (dict(num_iters=7), r'num_iters=7'),
    (dict(stem_channels=(64,)), r'stem_channels=\[64\] must end with embed_dim=32'),
]


@pytest.mark.parametrize('kwargs, message', BAD, ids=[m for _, m in BAD])
def test_bad_settings_name_the_key(kwargs, message):
    settings = {'token_transform': dict(type='TokenTransform', keep_ratio=0.5), 'reduce_layers': (1, 2),
                **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny(**settings)


def test_bad_backbone_settings_and_inputs_name_the_key(tmp_path):
    with pytest.raises(ValueError, match='num_classes is the head'):
        build_classifier(write_tiny_config(tmp_path, CONFIG, name='ps-vit', backbone=dict(num_classes=5)))
    with pytest.raises(ValueError, match=r'differs from img_size=32'):
        tiny()(images(size=48))
