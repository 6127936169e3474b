"""The table of methods, and the peers TPS, PiToMe and Hourglass against independent float64
references written here from their authors' algorithms (loops, one batch item at a time)."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from mmtt.functional import cluster_grid, hourglass_matrix, pitome_matrix, reconstruction_relation, tps_matrix
from mmtt.hosts import timm as tt
from mmtt.modules import METHOD_SPECS, METHODS, TokenRecovery, TokenTransform, default_metric
from mmtt.modules.methods import WINDOW_METHODS

PEERS = ['tps', 'pitome', 'hourglass']


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# The table


def test_table_is_the_one_source_of_method_facts():
    assert METHODS == tuple(METHOD_SPECS) == ('transform', 'prune', 'evit', 'tome', 'tps',
                                             'pitome', 'hourglass')
    assert WINDOW_METHODS == ('transform', 'hourglass')
    assert {m: default_metric(m) for m in METHODS} == dict(
        transform='hidden', prune='hidden', evit='hidden', tome='keys', tps='hidden',
        pitome='keys', hourglass='hidden')
    kinds = {m: TokenTransform(0.7, method=m).score_kind for m in METHODS}
    assert kinds == dict(transform='informative', prune='informative', evit='cls', tome=None,
                         tps='informative', pitome=None, hourglass=None)
    assert TokenTransform(0.7, method='tps', selection='cls').score_kind == 'cls'
    assert TokenTransform(0.7, method='tps', selection='uniform').score_kind is None
    assert TokenTransform(0.7, method='tps', selection='mixed').score_kind == 'informative'
    floors = {m: TokenTransform(0.1 if m not in ('tome', 'pitome') else 0.5, method=m).num_keep(5)
              for m in METHODS}
    assert floors == dict(transform=1, prune=1, evit=2, tome=3, tps=1, pitome=3, hourglass=1)
    for spec in METHOD_SPECS.values():
        assert spec.summary and spec.metric in ('hidden', 'keys')
        assert spec.scores in ('selection', 'cls', None)


@pytest.mark.parametrize('key,value,method', [
    ('top_k', 4, 'tps'), ('margin', 0.3, 'transform'), ('protect', False, 'tome'),
    ('cluster_iters', 3, 'transform'), ('cluster_temperature', 0.01, 'tome')])
def test_options_of_one_method_are_refused_for_another_naming_key_and_value(key, value, method):
    with pytest.raises(ValueError) as info:
        TokenTransform(0.7, method=method, **{key: value})
    assert f'{key}={value}' in str(info.value) and repr(method) in str(info.value)


@pytest.mark.parametrize('kwargs,needle', [
    (dict(method='pitome', keep_ratio=0.4), 'keep_ratio=0.4'),
    (dict(method='pitome', margin=1.5), 'margin=1.5'),
    (dict(method='pitome', protect='yes'), "protect='yes'"),
    (dict(method='nope'), "method='nope'"),
    (dict(method='hourglass', cluster_iters=0), 'cluster_iters=0'),
    (dict(method='hourglass', cluster_iters=2.5), 'cluster_iters=2.5'),
    (dict(method='hourglass', cluster_window=4), 'cluster_window=4'),
    (dict(method='hourglass', cluster_temperature=float('inf')), 'cluster_temperature=inf'),
])
def test_bad_settings_are_named(kwargs, needle):
    with pytest.raises(ValueError) as info:
        TokenTransform(**kwargs)
    assert needle in str(info.value)


def test_for_layer_fills_pitome_schedule_and_is_identity_for_the_others():
    t = TokenTransform(0.7, method='transform')
    assert t.for_layer(3, 12) is t
    p = TokenTransform(0.7, method='pitome')
    early, late = p.for_layer(3, 12), p.for_layer(6, 12)
    assert (early.margin, early.protect) == (0.75 - 0.75 * 3 / 12, False)
    assert (late.margin, late.protect) == (0.75 - 0.75 * 6 / 12, True)
    fixed = TokenTransform(0.7, method='pitome', margin=0.2).for_layer(9, 12)
    assert (fixed.margin, fixed.protect) == (0.2, True)


# ---------------------------------------------------------------------------------------------
# TPS


def tps_reference(x, scores, k, sizes):
    """TPS's inference squeeze, one item: kept = top-k scores (decreasing); each pruned token
    joins its most cosine-similar kept token with weight exp(cos), a kept token has weight e."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep, pruned = order[:k], order[k:]
    unit = [v / (v.norm() + 1e-6) for v in x]
    num = [math.e * sizes[i] * x[i] for i in keep]
    den = [math.e * sizes[i] for i in keep]
    out_sizes = [float(sizes[i]) for i in keep]
    for p in pruned:
        cos = [float(unit[p] @ unit[i]) for i in keep]
        j = max(range(k), key=lambda t: cos[t])
        w = math.exp(cos[j]) * sizes[p]
        num[j] = num[j] + w * x[p]
        den[j] = den[j] + w
        out_sizes[j] += float(sizes[p])
    return torch.stack([a / b for a, b in zip(num, den)]), torch.tensor(out_sizes, dtype=x.dtype)


@pytest.mark.parametrize('with_sizes', [False, True])
def test_tps_matches_reference_and_conserves_sizes(with_sizes):
    x, scores = rand(3, 19, 8), rand(3, 19, seed=1)
    sizes = rand(3, 19, seed=2).abs() + 0.5 if with_sizes else None
    matrix = tps_matrix(x, scores, 7, sizes)
    y = matrix.apply(x)
    w = matrix.dense()
    assert torch.allclose(w.sum(-1), torch.ones(3, 7, dtype=x.dtype))   # rows are means
    total = torch.full((3,), 19.0, dtype=x.dtype) if sizes is None else sizes.sum(1)
    assert torch.allclose(matrix.sizes.sum(1), total)
    for b in range(3):
        ref_y, ref_s = tps_reference(x[b], scores[b], 7, torch.ones(19, dtype=x.dtype)
                                     if sizes is None else sizes[b])
        assert (y[b] - ref_y).abs().max() < 1e-12
        assert (matrix.sizes[b] - ref_s).abs().max() < 1e-12


def test_tps_equals_their_vectorised_squeeze():
    """TPSModule's eval branch, transcribed: x * (e / den) + (num / den) @ y."""
    x, scores = rand(2, 16, 6), rand(2, 16, seed=3)
    order = scores.argsort(dim=1, descending=True)
    kept = x.gather(1, order[:, :5, None].expand(-1, -1, 6))
    pruned = x.gather(1, order[:, 5:, None].expand(-1, -1, 6))
    norm = lambda t: t / (t.norm(dim=-1, keepdim=True) + 1e-6)   # noqa: E731
    cos = norm(pruned) @ norm(kept).transpose(1, 2)
    mask = (cos == cos.amax(dim=2, keepdim=True)).to(x.dtype).transpose(1, 2)
    numerator = (cos.transpose(1, 2)).exp() * mask
    denominator = math.e + numerator.sum(-1, keepdim=True)
    theirs = kept * (math.e / denominator) + (numerator / denominator) @ pruned
    ours = TokenTransform(5 / 16, method='tps')(x, scores=scores).tokens
    assert (ours - theirs).abs().max() < 1e-12


# ---------------------------------------------------------------------------------------------
# PiToMe


def pitome_reference(metric, x, sizes, r, margin, protect):
    """PiToMe, one item, as pitome_vision + merge_wavg: energy order; protect: the lowest
    N - 2r kept, the top 2r alternate A/B and every A joins its best B; else all alternate and
    the r best-matched A tokens join (ToMe's edge order)."""
    n = len(x)
    unit = metric / metric.norm(dim=-1, keepdim=True)
    sim = unit @ unit.T
    energy = [float(F.elu(sim[i] - margin).mean()) for i in range(n)]
    order = sorted(range(n), key=lambda i: -energy[i])
    if protect:
        matched, first = order[:2 * r], [[i] for i in order[2 * r:]]
        a, b = matched[0::2], matched[1::2]
        merged = a
        unmerged = []
    else:
        a, b = order[0::2], order[1::2]
        best = {i: max(float(sim[i, j]) for j in b) for i in a}
        edge = sorted(a, key=lambda i: -best[i])
        merged, unmerged = edge[:r], edge[r:]
        first = [[i] for i in unmerged]
    groups = [[j] for j in b]
    for i in merged:
        k = max(range(len(b)), key=lambda t: float(sim[i, b[t]]))
        groups[k].append(i)
    rows = first + groups
    out = torch.stack([sum(sizes[i] * x[i] for i in g) / sum(sizes[i] for i in g) for g in rows])
    return out, torch.tensor([float(sum(sizes[i] for i in g)) for g in rows], dtype=x.dtype)


@pytest.mark.parametrize('protect', [True, False])
@pytest.mark.parametrize('n,r', [(16, 5), (15, 7), (9, 1)])
def test_pitome_matches_reference(protect, n, r):
    metric, x = rand(2, n, 6, seed=4), rand(2, n, 5, seed=5)
    sizes = rand(2, n, seed=6).abs() + 0.5
    matrix = pitome_matrix(metric, n - r, sizes, margin=0.3, protect=protect)
    y = matrix.apply(x)
    assert torch.allclose(matrix.dense().sum(-1), torch.ones(2, n - r, dtype=x.dtype))
    assert torch.allclose(matrix.sizes.sum(1), sizes.sum(1))
    for b in range(2):
        ref_y, ref_s = pitome_reference(metric[b], x[b], sizes[b], r, 0.3, protect)
        assert (y[b] - ref_y).abs().max() < 1e-12
        assert (matrix.sizes[b] - ref_s).abs().max() < 1e-12


def test_pitome_keep_all_is_identity_and_half_is_the_limit():
    metric = rand(1, 10, 4)
    assert torch.equal(pitome_matrix(metric, 10).dense()[0], torch.eye(10, dtype=metric.dtype))
    with pytest.raises(ValueError, match='num_keep=4'):
        pitome_matrix(metric, 4)
    with pytest.raises(ValueError, match='margin=2'):
        pitome_matrix(metric, 6, margin=2)


def test_pitome_module_with_a_class_token_leaves_it_and_uses_the_authors_default():
    x = rand(2, 17, 8, seed=7).float()
    out = TokenTransform(0.7, method='pitome')(x, num_prefix=1)
    ref = pitome_matrix(x[:, 1:], 11, margin=0.5, protect=True).apply(x[:, 1:])
    assert torch.equal(out.tokens[:, 0], x[:, 0]) and torch.allclose(out.tokens[:, 1:], ref)
    assert torch.allclose(out.sizes.sum(1), torch.full((2,), 17.0))


# ---------------------------------------------------------------------------------------------
# Hosts


TINY = dict(depth=4, img_size=64, embed_dim=32, num_heads=2)


@pytest.mark.parametrize('method', ['tps', 'pitome'])
def test_timm_host_reduces_and_ratio_one_is_exact(method):
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    counts = []
    with torch.no_grad():
        ref = model(x)
        tt.apply_patch(model, method=method, keep_ratio=1.0, layers=(1, 2))
        assert torch.equal(model(x), ref)
        tt.remove_patch(model)
        tt.apply_patch(model, method=method, keep_ratio=0.6, layers=(1, 2), recover=True)
        hooks = [b.register_forward_pre_hook(lambda m, a: counts.append(a[0].shape[1]))
                 for b in model.blocks]
        reduced = model(x)
        full = model.forward_features(x)
    assert counts[:4] == [17, 17, 11, 7] and full.shape == (2, 17, 32)
    assert torch.isfinite(reduced).all() and not torch.equal(reduced, ref)
    if method == 'pitome':   # the authors' DeiT schedule by block position, keys compared
        first, second = model.blocks[1].token_transform, model.blocks[2].token_transform
        assert (first.margin, first.protect) == (0.75 - 0.75 / 4, False)
        assert (second.margin, second.protect) == (0.75 - 0.75 * 2 / 4, True)
        assert model.blocks[1]._mmtt.keys
    for h in hooks:
        h.remove()


def build_in(scope, cfg):
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    model = MODELS.build(cfg)
    model.eval()   # mmseg's and mmdet's backbones' train() return None: no chaining
    return model


def seg_backbone(method, **kw):
    from tiny_seg import TINY_VIT
    return dict(TINY_VIT, type='TokenVisionTransformer', reduce_layers=(1, 2),
                token_transform=dict(type='TokenTransform', keep_ratio=0.6, method=method),
                token_recovery=dict(type='TokenRecovery'), **kw)


@pytest.mark.parametrize('method', ['tps', 'pitome'])
def test_mmseg_and_dpt_hosts_reduce_and_output_the_full_grid(method):
    from tiny_nyu import build_tiny

    import mmtt.models  # noqa: F401  (registers the backbones)
    torch.manual_seed(0)
    seg = build_in('mmseg', seg_backbone(method, out_indices=(0, 1, 3)))
    with torch.no_grad():
        outs = seg(torch.randn(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 6, 4)] * 3
    assert all(torch.isfinite(o).all() for o in outs)
    assert outs[2].flatten(2).transpose(1, 2)[0].unique(dim=0).shape[0] < 24   # recovered
    if method == 'pitome':   # one shared config, each layer its own scheduled copy
        layers = seg.layers
        assert (layers[1].token_transform.margin, layers[2].token_transform.protect) == (
            0.75 - 0.75 / 4, True)
    dpt = build_tiny(backbone=dict(reduce_layers=(1, 2), token_recovery=dict(type='TokenRecovery'),
                                   token_transform=dict(type='TokenTransform', keep_ratio=0.6,
                                                        method=method)))
    with torch.no_grad():
        depth = dpt.predict(torch.randn(1, 3, 70, 90))
    assert depth[0].pred_depth_map.shape == (70, 90)
    assert torch.isfinite(depth[0].pred_depth_map.data).all()


@pytest.mark.parametrize('method', ['tps', 'pitome'])
def test_swin_says_the_method_is_not_supported_in_windows(method):
    from tiny_coco import TINY_SWIN, TINY_TT

    import mmtt.models  # noqa: F401
    cfg = {**TINY_SWIN, **TINY_TT, 'type': 'TokenSwinTransformer'}
    cfg['token_transform'] = dict(TINY_TT['token_transform'], method=method)
    with pytest.raises(ValueError) as info:
        build_in('mmdet', cfg)
    assert f"method='{method}' is not supported in windows; use 'transform' or 'hourglass'" in str(info.value)


def test_tools_take_their_method_lists_from_the_table():
    from mmtt.tools import benchmark, fidelity
    assert benchmark.parse_args(['--model', 'vit_tiny_patch16_224', '--methods', *PEERS]).methods == PEERS
    assert fidelity.parse_args(['--images', '.', '--methods', *PEERS]).methods == PEERS
    with pytest.raises(SystemExit):
        fidelity.parse_args(['--images', '.', '--methods', 'nope'])


# ---------------------------------------------------------------------------------------------
# Hourglass


def hourglass_reference(x, h, w, ch, cw, iterations=5, window=5, temperature=0.02):
    """Expedit's TokenClusteringBlock, one item, with loops: centres = average pooling cells,
    initial label = the cell (nearest upsampling), soft k-means over the centres within
    window // 2 cells of the label."""
    n = h * w
    cells = []
    for i in range(ch):
        for j in range(cw):
            rows = range(i * h // ch, -(-(i + 1) * h // ch))
            cols = range(j * w // cw, -(-(j + 1) * w // cw))
            cells.append(torch.stack([x[r * w + c] for r in rows for c in cols]).mean(0))
    centres = torch.stack(cells)
    label = [(r * ch // h, c * cw // w) for r in range(h) for c in range(w)]
    near = [[abs(label[t][0] - s // cw) <= window // 2 and abs(label[t][1] - s % cw) <= window // 2
             for s in range(ch * cw)] for t in range(n)]
    for _ in range(iterations):
        affinity = torch.zeros(n, ch * cw, dtype=x.dtype)
        for t in range(n):
            logits = torch.tensor([-temperature * float((x[t] - centres[s]).pow(2).sum())
                                   if near[t][s] else -math.inf for s in range(ch * cw)],
                                  dtype=x.dtype)
            affinity[t] = logits.softmax(0)
        centres = torch.stack([(affinity[:, s, None] * x).sum(0) / affinity[:, s].sum()
                               for s in range(ch * cw)])
    return centres, affinity.sum(0)


@pytest.mark.parametrize('h,w,ch,cw,window', [(6, 5, 3, 2, 5), (8, 8, 4, 4, 3), (7, 9, 3, 5, 1)])
def test_hourglass_matches_reference_and_conserves_sizes(h, w, ch, cw, window):
    x = rand(2, h * w, 4, seed=8) * 3
    matrix = hourglass_matrix(x, (h, w), (ch, cw), window=window)
    y = matrix.apply(x)
    assert y.shape == (2, ch * cw, 4)
    assert torch.allclose(matrix.dense().sum(-1), torch.ones(2, ch * cw, dtype=x.dtype))
    assert torch.allclose(matrix.sizes.sum(1), torch.full((2,), float(h * w), dtype=x.dtype))
    for b in range(2):
        ref_y, ref_s = hourglass_reference(x[b], h, w, ch, cw, window=window)
        assert (y[b] - ref_y).abs().max() < 1e-10
        assert (matrix.sizes[b] - ref_s).abs().max() < 1e-10


def reconstruction_reference(x, y, k, temperature):
    rows = []
    for t in range(len(x)):
        weight = torch.stack([torch.exp(-temperature * (x[t] - c).pow(2).sum()) for c in y])
        kth = sorted(weight.tolist(), reverse=True)[k - 1]
        weight = torch.where(weight >= kth, weight, torch.zeros_like(weight))
        rows.append(weight / weight.norm())
    return torch.stack(rows)


def test_reconstruction_matches_reference_and_recovers_through_the_state():
    from mmtt.hosts.adapter import TokenState, reduce_tokens
    x = rand(2, 1 + 30, 4, seed=9)
    y = rand(2, 1 + 6, 4, seed=10)
    relation = reconstruction_relation(x[:, 1:], y[:, 1:], k=3, temperature=0.5)
    for b in range(2):
        ref = reconstruction_reference(x[b, 1:], y[b, 1:], 3, 0.5)
        assert (relation[b] - ref).abs().max() < 1e-12
    assert ((relation > 0).sum(-1) == 3).all()
    recovery = TokenRecovery('reconstruct', k=3, temperature=0.5)
    full = recovery.relation(x, y, 1)
    assert torch.equal(full[:, 1:, 1:], relation)
    assert torch.equal(full[:, 0], torch.eye(7, dtype=x.dtype)[0].expand(2, -1))
    # Two hourglass reductions in a row: the soft maps compose, the grid shrinks with them.
    t = TokenTransform(0.49, method='hourglass')
    tokens = rand(2, 1 + 100, 8, seed=11).float()
    state = TokenState(grid=(10, 10))
    mid, state = reduce_tokens(tokens, state, t, recovery, 1)
    assert state.grid == (7, 7) and state.relation.shape == (2, 101, 50) and state.index is None
    out, state = reduce_tokens(mid, state, t, recovery, 1)
    assert state.grid == (5, 5) and out.shape == (2, 26, 8)
    expected = recovery.relation(tokens, mid, 1) @ recovery.relation(mid, out, 1) @ out
    assert torch.allclose(recovery.recover(out, state), expected, atol=1e-6)
    with pytest.raises(ValueError, match='recover'):
        recovery(out, state.index)   # a host passing only an index is told to pass the state


def test_hourglass_needs_the_grid_and_names_it():
    from mmtt.hosts.adapter import Captured, TokenState, reduce_tokens
    t = TokenTransform(0.49, method='hourglass')
    x = torch.randn(1, 17, 8)
    with pytest.raises(ValueError, match='grid_size=None'):
        t(x, num_prefix=1)
    with pytest.raises(ValueError, match=r'grid_size=\(3, 5\)'):
        t(x, num_prefix=1, grid_size=(3, 5))
    # After a reduction that leaves no grid (pruning), hourglass cannot follow.
    pruned, state = reduce_tokens(x, TokenState(grid=(4, 4)), TokenTransform(0.5, method='prune'),
                                  None, 1, Captured(scores=torch.rand(1, 17)))
    assert state.grid is None
    with pytest.raises(ValueError, match='grid_size=None'):
        reduce_tokens(pruned, state, t, None, 1)
    assert cluster_grid((40, 40), 0.49) == (28, 28) and cluster_grid((48, 48), 0.4444) == (32, 32)


def test_module_passes_its_clustering_settings_to_the_builder():
    x = rand(2, 1 + 48, 6, seed=12)
    for settings, keywords in [({}, dict(iterations=5, window=5, temperature=0.02)),
                               (dict(cluster_iters=2, cluster_window=3, cluster_temperature=0.3),
                                dict(iterations=2, window=3, temperature=0.3))]:
        out = TokenTransform(0.25, method='hourglass', **settings)(x, num_prefix=1, grid_size=(6, 8))
        ref = hourglass_matrix(x[:, 1:], (6, 8), (3, 4), **keywords)
        assert torch.allclose(out.tokens[:, 1:], ref.apply(x[:, 1:]), atol=1e-12)
        assert torch.allclose(out.sizes[:, 1:], ref.sizes, atol=1e-12)


def test_timm_host_clusters_the_patch_grid_and_reconstructs():
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=3,
                              **dict(TINY, img_size=(64, 96))).eval()
    x = torch.randn(2, 3, 64, 96)
    counts = []
    hooks = [b.register_forward_pre_hook(lambda m, a: counts.append(a[0].shape[1]))
             for b in model.blocks]
    with torch.no_grad():
        tt.apply_patch(model, method='hourglass', keep_ratio=0.49, layers=(1, 2),
                       recover='reconstruct')
        feats = model.forward_features(x)
        maps = model.forward_intermediates(x, indices=(3,), intermediates_only=True)
    assert counts[:4] == [25, 25, 1 + 3 * 4, 1 + 2 * 3]   # 4 x 6 -> 3 x 4 -> 2 x 3 clusters
    assert feats.shape == (2, 25, 32) and torch.isfinite(feats).all()
    assert maps[0].shape == (2, 32, 4, 6)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize('dataset', ['ade20k', 'cityscapes'])
def test_hourglass_configs_build_and_reduce_with_tiny_overrides(dataset):
    from mmengine.config import Config
    from tiny_seg import REPO, TINY_VIT

    import mmtt.models  # noqa: F401
    cfg = Config.fromfile(str(REPO / f'configs/segmenter/segmenter_hourglass_{dataset}.py'))
    backbone = cfg.model.backbone
    assert backbone.token_transform.method == 'hourglass'
    assert backbone.token_recovery.mode == 'reconstruct'
    assert (backbone.token_recovery.k, backbone.token_recovery.temperature) == (20, 0.02)
    side = dict(ade20k=40, cityscapes=48)[dataset]
    clusters = dict(ade20k=28, cityscapes=32)[dataset]
    assert cluster_grid((side, side), backbone.token_transform.keep_ratio) == (clusters, clusters)
    assert backbone.reduce_layers == dict(ade20k=(9,), cityscapes=(11,))[dataset]
    cfg.model.pretrained = None
    backbone.update(TINY_VIT, reduce_layers=(1,))
    cfg.model.decode_head.update(in_channels=32, channels=32, num_heads=2, embed_dims=32)
    model = build_in('mmseg', cfg.model)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape[1] == cfg.model.decode_head.num_classes and torch.isfinite(logits).all()


def test_mmseg_host_hourglass_outputs_the_full_grid():
    import mmtt.models  # noqa: F401
    torch.manual_seed(0)
    cfg = seg_backbone('hourglass', out_indices=(0, 1, 3))
    cfg['token_transform']['keep_ratio'] = 0.49
    cfg['token_recovery'] = dict(type='TokenRecovery', mode='reconstruct')
    seg = build_in('mmseg', cfg)
    with torch.no_grad():
        outs = seg(torch.randn(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 6, 4)] * 3
    assert all(torch.isfinite(o).all() for o in outs)
    from tiny_nyu import build_tiny
    dpt = build_tiny(backbone=dict(reduce_layers=(1,), token_recovery=cfg['token_recovery'],
                                   token_transform=cfg['token_transform']))
    with torch.no_grad():
        depth = dpt.predict(torch.randn(1, 3, 70, 90))
    assert depth[0].pred_depth_map.shape == (70, 90)
    assert torch.isfinite(depth[0].pred_depth_map.data).all()
