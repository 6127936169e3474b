"""timm ViT integration: exactness at ratio 1, undo, state dict, fused path, eq. 7 in blocks."""
import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from mmtt.analysis import count_flops
from mmtt.hosts import timm as tt
from mmtt.hosts.adapter import BlockSettings
from mmtt.modules.state import StateStep, TokenState

TINY = {   # name -> kwargs giving a small model with the family's prefix-token layout
    'vit_tiny_patch16_224': dict(depth=4, img_size=96),
    'deit_tiny_distilled_patch16_224': dict(depth=4, img_size=96),        # 2 prefix tokens
    'vit_small_patch14_reg4_dinov2': dict(depth=4, img_size=98, embed_dim=96, num_heads=3),  # LayerScale, registers
    'vit_base_patch16_224': dict(depth=4, img_size=64, embed_dim=64, num_heads=2, class_token=False,
                                 global_pool='avg'),                       # no prefix, avg pool
}
METHODS = ['transform', 'tome', 'evit', 'prune']


def make(name):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **TINY[name]).eval()


def image(model, b=2):
    return torch.randn(b, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(1))


# EViT needs a class token, which the last model has not.
CASES = [(name, method) for name in TINY for method in METHODS
         if not (method == 'evit' and TINY[name].get('class_token') is False)]


@pytest.mark.parametrize('name,method', CASES)
def test_ratio_one_reproduces_timm_exactly_and_remove_patch_restores(name, method):
    model, x = make(name), image(make(name))
    with torch.no_grad():
        ref = model(x)
        tt.apply_patch(model, method=method, keep_ratio=1.0, layers=(0, 2))
        assert torch.equal(model(x), ref)
        tt.remove_patch(model)
        tt.apply_patch(model, method=method, keep_ratio=0.6, layers=(0, 2))
        reduced = model(x)
        tt.remove_patch(model)
        assert type(model) in (VisionTransformer, type(model)) and not hasattr(model, 'token_recovery')
        assert all(type(b) is Block and type(b.attn) is Attention for b in model.blocks)
        assert torch.equal(model(x), ref)
    assert torch.isfinite(reduced).all() and not torch.equal(reduced, ref)


@pytest.mark.parametrize('name', list(TINY))
def test_patch_keeps_state_dict_and_adds_no_parameters(name):
    model = make(name)
    before = model.state_dict()
    tt.apply_patch(model, keep_ratio=0.7, layers=(1, 2), recover=True)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in before.values()
                                                              if v.dtype.is_floating_point)
    model.load_state_dict(before, strict=True)


@pytest.mark.parametrize('name,method', CASES)
def test_recover_returns_full_token_sequence(name, method):
    model = make(name)
    x = image(model)
    with torch.no_grad():
        full = model.forward_features(x)
        tt.apply_patch(model, method=method, keep_ratio=0.6, layers=(1, 2), recover=True)
        recovered = model.forward_features(x)
    assert recovered.shape == full.shape
    prefix = model.num_prefix_tokens
    assert torch.isfinite(recovered).all()
    # Recovery repeats reduced tokens: fewer distinct patch tokens than patches.
    assert len(recovered[0, prefix:].unique(dim=0)) < full.shape[1] - prefix


def test_unreduced_layers_keep_the_fused_kernel(sdpa_calls):
    model = make('vit_tiny_patch16_224')
    tt.apply_patch(model, keep_ratio=0.7, layers=(1,))
    with torch.no_grad():
        model(image(model))
    # blocks 0, 2, 3 use SDPA; 2 and 3 come after the reduction and carry log s as the mask
    assert sdpa_calls == [False, True, True]


def test_score_stride_keeps_the_fused_kernel_in_reducing_blocks_too(sdpa_calls):
    model = make('vit_tiny_patch16_224')
    x = image(model)
    with torch.no_grad():
        tt.apply_patch(model, keep_ratio=0.7, layers=(1,), score_stride=1)
        exact = model(x)
        tt.remove_patch(model)
        tt.apply_patch(model, keep_ratio=0.7, layers=(1,), score_stride=2, recover='share')
        sdpa_calls.clear()
        sampled = model(x)
        assert sdpa_calls == [False, False, True, True]   # block 1 reduces on the fused kernel now
        assert model.token_recovery.mode == 'share'
        assert model.forward_features(x).shape[1] == 1 + 36
    assert exact.shape == sampled.shape and torch.isfinite(sampled).all()
    tt.remove_patch(model)
    tt.apply_patch(model, keep_ratio=0.7, layers=(1,))
    with torch.no_grad():
        assert torch.equal(model(x), exact)   # score_stride=1 is the default


def test_anchor_reaches_the_blocks_and_keeps_informative_tokens_whole():
    model = make('vit_tiny_patch16_224')
    x = image(model)
    tt.apply_patch(model, keep_ratio=0.5, layers=(1,), anchor=True, top_k=2)
    transform = model.blocks[1].token_transform
    assert transform.anchor and 'anchor=True' in repr(transform)
    with torch.no_grad():
        hidden = model.blocks[0](model._embed(x), step=StateStep())
        scores = torch.rand(hidden.shape[:2], generator=torch.Generator().manual_seed(0))
        out = transform(hidden, num_prefix=1, scores=scores)
    w, kept = out.matrix.dense(), transform.num_keep(hidden.shape[1] - 1)
    # Each informative token's column has one non-zero, on its own row: every row has one.
    single = (w > 0).sum(dim=1) == 1
    for b in range(w.shape[0]):
        assert set(w[b].argmax(dim=0)[single[b]].tolist()) == set(range(kept))
    assert out.tokens.shape[1] == 1 + kept
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_block_with_sizes_equals_block_on_duplicated_tokens():
    """Eq. 7: a token of size s attends like s identical copies of itself."""
    torch.manual_seed(0)
    block = Block(dim=16, num_heads=2, init_values=0.5).eval()
    x = torch.randn(1, 1 + 5, 16)
    sizes = torch.tensor([[1.0, 2.0, 1.0, 3.0, 1.0, 4.0]])
    expanded = x.repeat_interleave(sizes[0].long(), dim=1)
    with torch.no_grad():
        ref = block(expanded)
        block.__class__ = tt.TokenBlock
        block.token_transform, block._mmtt = None, BlockSettings(num_prefix=1)
        out = block(x, step=StateStep(TokenState(sizes=sizes)))
    first_copy = torch.cat([torch.zeros(1), sizes[0].cumsum(0)[:-1]]).long()
    assert torch.allclose(out[0], ref[0, first_copy], atol=1e-5)


def test_avg_pool_is_weighted_by_size():
    model = make('vit_base_patch16_224')
    tt.apply_patch(model, keep_ratio=0.5, layers=(1,))
    feats = torch.randn(2, 4, 64)
    sizes = torch.tensor([[1.0, 1.0, 2.0, 4.0]] * 2)
    pooled = model.forward_head(feats, pre_logits=True, sizes=sizes)
    expected = (feats * torch.tensor([1.0, 1.0, 2.0, 4.0])[None, :, None]).sum(1) / 8
    assert torch.allclose(pooled, model.fc_norm(expected))


@pytest.mark.parametrize('preset,gflops', [('deit-s/0.7', 3.0), ('deit-s/0.6', 2.6)])
def test_presets_reach_the_papers_gflops(preset, gflops):
    model = timm.create_model('deit_small_patch16_224', pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    assert round(count_flops(model, (x,)).gflops, 1) == 4.6
    tt.apply_patch(model, preset=preset)
    assert round(count_flops(model, (x,)).gflops, 1) == gflops


def test_bad_arguments_are_named():
    model = make('vit_tiny_patch16_224')
    with pytest.raises(ValueError, match=r'layers=\[4\] out of range for a model with 4 blocks'):
        tt.apply_patch(model, layers=(1, 4))
    with pytest.raises(ValueError, match="method='cluster'"):
        tt.apply_patch(model, method='cluster', layers=(1,))
    with pytest.raises(ValueError, match="preset='deit-s/0.1'"):
        tt.apply_patch(model, preset='deit-s/0.1')
    with pytest.raises(ValueError, match="metric='values'"):
        tt.apply_patch(model, metric='values', layers=(1,))
    with pytest.raises(ValueError, match='must be a timm VisionTransformer'):
        tt.apply_patch(torch.nn.Linear(2, 2))
    foreign = make('vit_tiny_patch16_224')
    foreign.blocks[1].__class__ = type('MyBlock', (foreign.blocks[1].__class__,), {})
    with pytest.raises(ValueError, match='block 1 is MyBlock with Attention; apply_patch supports timm Block'):
        tt.apply_patch(foreign, layers=(1,))
    tt.apply_patch(model, layers=(1,))
    with pytest.raises(ValueError, match='already patched'):
        tt.apply_patch(model, layers=(1,))


def test_forward_hooks_on_blocks_see_tensors_as_on_timms_model():
    """A patched block returns its tokens alone (the state travels in a StateStep), so the usual
    way to pull features out of a timm ViT keeps working: one tensor per block, with the reduced
    token count after a reduction."""
    model = make('vit_tiny_patch16_224')
    x = image(model)
    tt.apply_patch(model, keep_ratio=0.5, reduce_layers=(1,))
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append(out)) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert all(isinstance(t, torch.Tensor) for t in seen) and len(seen) == len(model.blocks)
    n = 1 + (x.shape[-1] // 16) ** 2
    assert [t.shape[1] for t in seen] == [n, 1 + round(0.5 * (n - 1))] + [1 + round(0.5 * (n - 1))] * 2


def test_one_remove_patch_undoes_the_timm_patch_exactly():
    import mmtt
    model = make('vit_tiny_patch16_224')
    x = image(model)
    with torch.no_grad():
        ref = model(x)
    classes = [type(m) for m in model.modules()]
    keys = {name: set(vars(m)) for name, m in model.named_modules()}
    tt.apply_patch(model, keep_ratio=0.5, reduce_layers=(1, 2), recover=True)
    assert mmtt.remove_patch(model) is model
    assert [type(m) for m in model.modules()] == classes
    assert {name: set(vars(m)) for name, m in model.named_modules()} == keys
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    tt.apply_patch(model, keep_ratio=0.5, reduce_layers=(1,))   # patchable again
