"""The registered modules: registry, config keys, prefix tokens, no-op, recovery, errors."""
import pytest
import torch
from mmengine.registry import MODELS, DefaultScope

from mmtt import TokenRecovery, TokenTransform
from mmtt.functional import nearest_recovery_index


def tokens(b=2, n=17, c=8, seed=0):
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_builds_by_plain_name_under_downstream_default_scopes(scope):
    registry = {'mmseg': 'mmseg.registry', 'mmdet': 'mmdet.registry'}[scope]
    host_models = __import__(registry, fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        t = host_models.build(dict(type='TokenTransform', keep_ratio=0.7, kappa=0.5, tau=100.0))
        r = host_models.build(dict(type='TokenRecovery'))
    assert isinstance(t, TokenTransform) and isinstance(r, TokenRecovery)
    assert (t.keep_ratio, t.kappa, t.tau) == (0.7, 0.5, 100.0)


def test_defaults_follow_the_paper_and_add_no_parameters():
    t = MODELS.build(dict(type='TokenTransform'))
    assert 0.5 <= t.kappa <= 0.6 and t.tau == 150.0 and t.method == 'transform'
    assert list(t.parameters()) == [] and list(t.buffers()) == []
    assert list(TokenRecovery().parameters()) == []


@pytest.mark.parametrize('method', ['transform', 'prune', 'evit', 'tome'])
def test_keep_ratio_one_is_an_exact_no_op(method):
    x = tokens()
    out = TokenTransform(keep_ratio=1.0, method=method)(x, num_prefix=1, scores=torch.rand(2, 17))
    assert out.tokens is x and out.sizes is None and out.matrix is None


@pytest.mark.parametrize('method,selection', [('transform', 'informative'), ('transform', 'cls'),
                                              ('transform', 'uniform'), ('transform', 'mixed'),
                                              ('prune', 'informative'),
                                              ('prune', 'uniform'), ('evit', 'informative'),
                                              ('tome', 'informative')])
def test_prefix_tokens_are_never_reduced(method, selection):
    x = tokens(n=2 + 20)
    t = TokenTransform(keep_ratio=0.6, method=method, selection=selection)
    out = t(x, num_prefix=2, scores=torch.rand(2, 22))
    assert out.tokens.shape == (2, 2 + 12, 8)
    assert torch.equal(out.tokens[:, :2], x[:, :2])
    assert torch.equal(out.sizes[:, :2], torch.ones(2, 2))
    total = 20.0 if method != 'prune' else None
    if total:
        assert torch.allclose(out.sizes[:, 2:].sum(-1), torch.full((2,), total))


def test_sizes_compose_over_two_reductions():
    t = TokenTransform(keep_ratio=0.5, kappa=0.0, tau=20.0)
    x = tokens(n=1 + 32)
    first = t(x, num_prefix=1, scores=torch.rand(2, 33))
    second = t(first.tokens, first.sizes, num_prefix=1, scores=torch.rand(2, 17))
    assert second.tokens.shape[1] == 1 + 8
    # Column softmax conserves mass, and sizes count originals: still 32 patches in total.
    assert torch.allclose(second.sizes[:, 1:].sum(-1), torch.full((2,), 32.0), atol=1e-4)


def test_transform_then_recover_returns_all_tokens():
    t, r = TokenTransform(keep_ratio=0.5), TokenRecovery()
    x0 = tokens(n=1 + 24)
    a = t(x0, num_prefix=1, scores=torch.rand(2, 25))
    b = t(a.tokens, a.sizes, num_prefix=1, scores=torch.rand(2, 13))
    index = r.compose(r.index(x0, a.tokens, 1), r.index(a.tokens, b.tokens, 1))
    full = r(b.tokens, index)
    assert full.shape == x0.shape
    assert torch.equal(full[:, 0], b.tokens[:, 0])   # the class token maps to itself
    expected = nearest_recovery_index(a.tokens[:, 1:], b.tokens[:, 1:]).gather(
        1, nearest_recovery_index(x0[:, 1:], a.tokens[:, 1:])) + 1
    assert torch.equal(index[:, 1:], expected)
    assert r(b.tokens, None) is b.tokens


def test_assignment_recovery_uses_the_matrix():
    t, r = TokenTransform(keep_ratio=0.5, method='tome'), TokenRecovery(mode='assignment')
    x = tokens(n=16)
    out = t(x)
    index = r.index(x, out.tokens, 0, out.matrix)
    assert torch.equal(index, out.matrix.index)


def test_share_recovery_sends_each_token_to_its_most_similar_informative_token():
    t, r = TokenTransform(keep_ratio=0.5, kappa=0.3), TokenRecovery(mode='share')
    x = tokens(n=1 + 16)
    out = t(x, num_prefix=1, scores=torch.rand(2, 17))
    index = r.index(x, out.tokens, 1, out.matrix)
    assert torch.equal(index[:, 0], torch.zeros(2, dtype=torch.long))
    assert torch.equal(index[:, 1:], out.matrix.largest_share() + 1)
    with pytest.raises(ValueError, match="mode='share'"):
        r.index(x, out.tokens, 1)


def test_gradients_flow_through_the_module():
    x = tokens(n=1 + 16).requires_grad_()
    out = TokenTransform(keep_ratio=0.5, kappa=0.2, tau=20.0)(x, num_prefix=1, scores=torch.rand(2, 17))
    out.tokens.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, 1:].abs().sum() > 0


@pytest.mark.parametrize('cfg,needle', [
    (dict(keep_ratio=0.0), 'keep_ratio=0.0'),
    (dict(keep_ratio=1.2), 'keep_ratio=1.2'),
    (dict(method='merge'), "method='merge'"),
    (dict(selection='random'), "selection='random'"),
    (dict(similarity='l1'), "similarity='l1'"),
    (dict(kappa=2.0), 'kappa=2.0'),
    (dict(tau=0), 'tau=0'),
    (dict(method='tome', keep_ratio=0.4), 'keep_ratio=0.4'),
    (dict(orphans='drop'), "orphans='drop'"),
    (dict(top_k=0), 'top_k=0'),
    (dict(score_stride=0), 'score_stride=0'),
    (dict(method='tome', top_k=4), "top_k=4 applies only to method='transform'"),
    (dict(method='tome', anchor=True), "anchor=True applies only to method='transform'"),
    (dict(anchor='yes'), "anchor='yes'"),
    (dict(distinct_stride=0, selection='mixed'), 'distinct_stride=0'),
    (dict(distinct_stride=4), "distinct_stride=4 applies only to selection='mixed'"),
])
def test_bad_config_names_the_key(cfg, needle):
    with pytest.raises(ValueError) as info:
        MODELS.build(dict(type='TokenTransform', **cfg))
    assert needle in str(info.value)
    with pytest.raises(ValueError, match="mode='l2'"):
        TokenRecovery(mode='l2')


def test_top_k_counts_k_multiply_adds_per_token_channel_in_the_flop_counter():
    from mmtt.analysis import count_flops

    class Host(torch.nn.Module):
        def __init__(self, top_k):
            super().__init__()
            self.token_transform = TokenTransform(keep_ratio=0.5, top_k=top_k)

        def forward(self, x):
            return self.token_transform(x, scores=x.sum(-1)).tokens

    n, c, m, k = 40, 8, 20, 3
    x = tokens(b=1, n=n, c=c)
    dense, sparse = count_flops(Host(None), (x,)), count_flops(Host(k), (x,))
    assert dense.compression == 2 * m * n * c             # similarity, then W @ X
    # similarity, the row totals s (scatter-add of k N shares), then W X by scatter-add
    assert sparse.compression == m * n * c + k * n + k * n * c
    assert not {'aten::scatter_add_', 'aten::index_add_'} & set(sparse.uncounted)
    assert torch.allclose(Host(m)(x), Host(None)(x), atol=1e-5)   # k = M: the dense result


def test_nearest_recovery_and_hourglass_distances_are_counted_as_their_products():
    from mmtt.analysis import count_flops
    from mmtt.functional import nearest_recovery_index
    from mmtt.functional.peers import reconstruction_relation

    class Pair(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x, y):
            return self.fn(x, y)

    b, n, m, c = 2, 30, 12, 8
    x, y = torch.randn(b, n, c), torch.randn(b, m, c)
    for fn in (nearest_recovery_index, reconstruction_relation):
        report = count_flops(Pair(fn), (x, y))
        assert report.total == b * n * m * c and 'aten::baddbmm' not in report.uncounted


def test_bad_call_names_the_argument():
    t = TokenTransform(keep_ratio=0.5)
    x = tokens()
    with pytest.raises(ValueError, match='scores is required'):
        t(x)
    with pytest.raises(ValueError, match='scores has size 16 in dim 1'):
        t(x, scores=torch.rand(2, 16))
    with pytest.raises(ValueError, match='sizes has size 1 in dim 0'):
        t(x, torch.ones(1, 17), scores=torch.rand(2, 17))
    with pytest.raises(ValueError, match='num_prefix=17'):
        t(x, num_prefix=17, scores=torch.rand(2, 17))
    with pytest.raises(ValueError, match='x must have 3 dims'):
        t(x[0], scores=torch.rand(2, 17))
    with pytest.raises(ValueError, match='no prefix token'):
        TokenTransform(method='evit')(x, scores=torch.rand(2, 17))
