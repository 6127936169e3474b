"""The pure tensor functions against the paper's equations, invariants, and bad input."""
import pytest
import reference as ref
import torch

from mmtt import functional as TF


def random_attention(b, h, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, n, generator=g, dtype=torch.float64).softmax(dim=-1)


def clustered_tokens(b, n, c, seed=0, dtype=torch.float64):
    """Tokens around a few directions, so gated similarities are neither all 0 nor all 1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, 4, c, generator=g, dtype=torch.float64)
    pick = torch.randint(0, 4, (b, n), generator=g)
    x = centres.gather(1, pick[..., None].expand(-1, -1, c))
    return (x + 0.6 * torch.randn(b, n, c, generator=g, dtype=torch.float64)).to(dtype)


def test_informative_scores_match_eq2():
    attn = random_attention(2, 3, 7)
    assert torch.allclose(TF.informative_scores(attn), ref.informative_scores(attn), atol=1e-10, rtol=0)


@pytest.mark.parametrize('kappa,tau', [(0.55, 150.0), (0.3, 20.0), (-1.0, 1.0), (0.9, 250.0)])
def test_transform_matrix_matches_eq3_to_8(kappa, tau):
    x = clustered_tokens(2, 12, 5)
    scores = torch.rand(2, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w, s = TF.transform_matrix(x, scores, 5, kappa, tau)
    assert w.shape == (2, 5, 12) and s.shape == (2, 5)
    for b in range(2):
        w_ref, s_ref, _ = ref.transform_matrix(x[b], scores[b], 5, kappa, tau)
        assert torch.allclose(w[b], w_ref, atol=1e-10, rtol=0)
        assert torch.allclose(s[b], s_ref, atol=1e-10, rtol=1e-12)


def test_transform_with_sizes_equals_paper_on_expanded_tokens():
    """Documented meaning of sizes: token j counts as sizes_j identical originals."""
    x = clustered_tokens(1, 6, 4, seed=3)
    scores = torch.arange(6, dtype=torch.float64)[None]
    sizes = torch.tensor([[1.0, 3.0, 2.0, 1.0, 4.0, 2.0]], dtype=torch.float64)
    w, s = TF.transform_matrix(x, scores, 3, 0.2, 10.0, sizes)
    reps = sizes[0].long()
    x_big = x[0].repeat_interleave(reps, dim=0)
    # The same three queries (tokens 5, 4, 3): only the first copy of a token may be chosen.
    first_copy = torch.zeros(int(reps.sum()), dtype=torch.bool)
    first_copy[torch.cat([torch.zeros(1, dtype=torch.long), reps.cumsum(0)[:-1]])] = True
    scores_big = torch.where(first_copy, scores[0].repeat_interleave(reps), -1e9)
    w_big, s_big, _ = ref.transform_matrix(x_big, scores_big, 3, 0.2, 10.0)
    owner = torch.arange(6).repeat_interleave(reps)
    w_folded = torch.zeros(3, 6, dtype=torch.float64).index_add_(1, owner, w_big)
    assert torch.allclose(w[0], w_folded, atol=1e-10)
    assert torch.allclose(s[0], s_big, atol=1e-10)


def test_rows_of_w_sum_to_one_and_s_is_column_softmax_mass():
    x = clustered_tokens(3, 20, 8)
    scores = torch.rand(3, 20, dtype=torch.float64)
    w, s = TF.transform_matrix(x, scores, 7, 0.5, 150.0)
    assert torch.allclose(w.sum(-1), torch.ones(3, 7, dtype=torch.float64), atol=1e-12)
    keep = scores.topk(7, dim=1).indices
    q = x.gather(1, keep[..., None].expand(-1, -1, 8))
    sim = torch.nn.functional.cosine_similarity(q[:, :, None], x[:, None], dim=-1)
    m = (torch.where(sim >= 0.5, sim, 0.0) * 150.0).softmax(dim=1)
    assert torch.allclose(s, m.sum(-1), atol=1e-10)
    assert torch.allclose(m.sum(1), torch.ones(3, 20, dtype=torch.float64))


def test_very_large_tau_gives_hard_assignment():
    x = clustered_tokens(2, 16, 6)
    scores = torch.rand(2, 16, dtype=torch.float64)
    w, _ = TF.transform_matrix(x, scores, 4, -1.0, 1e6)
    nonzero_per_column = (w > 1e-12).sum(dim=1)
    assert (nonzero_per_column == 1).all()


def test_kappa_above_every_similarity_gives_finite_output():
    x = clustered_tokens(2, 10, 4)
    w, s = TF.transform_matrix(x, torch.rand(2, 10, dtype=torch.float64), 3, 1.0, 250.0)
    assert torch.isfinite(w).all() and torch.isfinite(s).all()
    # every GSim is 0 (self-similarity rounds below 1 or not): columns spread uniformly
    assert torch.allclose(s.sum(-1), torch.full((2,), 10.0, dtype=torch.float64))


def test_orphans_nearest_sends_gated_out_columns_to_one_row():
    x = clustered_tokens(1, 30, 6, seed=5)
    scores = torch.rand(1, 30, dtype=torch.float64)
    w, _ = TF.transform_matrix(x, scores, 4, 0.8, 150.0, orphans='nearest')
    keep = scores.topk(4).indices
    sim = TF.similarity(x.gather(1, keep[..., None].expand(-1, -1, 6)), x)
    orphan = (sim < 0.8).all(dim=1)[0]
    assert orphan.any()
    assert ((w[0][:, orphan] > 0).sum(0) == 1).all()


def test_euclidean_similarity_equals_cosine_for_equal_norms():
    x = torch.nn.functional.normalize(torch.randn(2, 9, 5, dtype=torch.float64), dim=-1) * 3
    assert torch.allclose(TF.similarity(x, x, 'euclidean'), TF.similarity(x, x, 'cosine'), atol=1e-12)
    y = torch.randn(2, 9, 5, dtype=torch.float64)
    e = TF.similarity(y[:, :3], y, 'euclidean')
    d2 = torch.cdist(y[:, :3], y).pow(2)
    n2 = y[:, :3].pow(2).sum(-1)[..., None] + y.pow(2).sum(-1)[:, None]
    assert torch.allclose(e, 1 - d2 / n2, atol=1e-12)


def sized_attention_case(n, seed):
    """q, k, v ``[2, 3, n, 4]``, random sizes, their eq. 7 bias and the explicit attention map."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64) for _ in range(3))
    sizes = torch.rand(2, n, generator=g, dtype=torch.float64) * 3 + 0.5
    attn = (q @ k.transpose(-2, -1) / 2.0 + sizes.log()[:, None, None]).softmax(-1)
    return q, k, v, sizes, TF.size_bias(sizes, q.dtype), attn


def test_attention_with_scores_matches_explicit_attention():
    q, k, v, sizes, bias, attn = sized_attention_case(11, seed=0)
    out, scores, cls = TF.attention_with_scores(q, k, v, bias, chunk_rows=4)
    assert torch.allclose(out, attn @ v, atol=1e-12)
    assert torch.allclose(scores, ref.informative_scores(attn), atol=1e-10)
    assert torch.allclose(cls, TF.class_token_scores(attn), atol=1e-12)
    assert torch.allclose(TF.sized_attention(q, k, v, sizes), attn @ v, atol=1e-12)


@pytest.mark.parametrize('kind', ['prune', 'evit', 'tome', 'transform'])
def test_cheap_apply_equals_dense_matrix_product(kind):
    x = clustered_tokens(2, 14, 6)
    scores = torch.rand(2, 14, dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, 14)).double()
    matrix = {'prune': lambda: TF.prune_matrix(scores, 9, sizes),
              'evit': lambda: TF.evit_matrix(scores, 9, sizes),
              'tome': lambda: TF.tome_matrix(x, 9, sizes),
              'transform': lambda: TF.transform_token_matrix(x, scores, 9, 0.5, 150.0, sizes)}[kind]()
    w = matrix.dense()
    assert w.shape == (2, 9, 14)
    assert torch.allclose(matrix.apply(x), w @ x, atol=1e-12)
    if kind == 'prune':
        assert set(w.unique().tolist()) == {0.0, 1.0} and (w.sum(-1) == 1).all()
        assert (w.sum(1) <= 1).all()
    else:
        assert torch.allclose(w.sum(-1), torch.ones(2, 9, dtype=torch.float64), atol=1e-12)
    if kind in ('evit', 'tome'):
        assert ((w > 0).sum(dim=1) == 1).all()   # merging: one non-zero per column
        assert torch.allclose(matrix.sizes.sum(-1), sizes.sum(-1))


def test_top_k_keeps_the_k_largest_column_shares_of_eq5_then_eq6_and_8():
    x = clustered_tokens(2, 12, 5, seed=2)
    scores = torch.rand(2, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, 12)).double()
    for b in range(2):
        _, _, m = ref.transform_matrix(x[b], scores[b], 5, -1.0, 20.0)
        # Reference: zero all but each column's 2 largest m_ij, rescale columns to 1, eq. 6, 8.
        # (kappa = -1 gates nothing, so no column is uniform and the top 2 have no ties.)
        m = torch.where(m >= m.topk(2, dim=0).values[-1], m, 0.0)
        mass = m / m.sum(0) * sizes[b]
        matrix = TF.transform_token_matrix(x, scores, 5, -1.0, 20.0, sizes, top_k=2)
        assert matrix.kind == 'scatter' and matrix.index.shape == (2, 2, 12)
        assert torch.allclose(matrix.dense()[b], mass / mass.sum(1, keepdim=True), atol=1e-10)
        assert torch.allclose(matrix.sizes[b], mass.sum(1), atol=1e-10)
    w = matrix.dense()
    assert ((w > 0).sum(dim=1) <= 2).all() and torch.allclose(w.sum(-1), torch.ones(2, 5).double())
    assert torch.allclose(matrix.sizes.sum(-1), sizes.sum(-1))    # s still counts originals
    assert torch.allclose(matrix.apply(x), w @ x, atol=1e-12)
    assert torch.equal(matrix.assignment(), w.argmax(dim=1))
    # k = M keeps every share: exactly the dense W.
    full = TF.transform_token_matrix(x, scores, 5, -1.0, 20.0, sizes, top_k=5)
    dense_w, dense_s = TF.transform_matrix(x, scores, 5, -1.0, 20.0, sizes)
    assert torch.allclose(full.dense(), dense_w, atol=1e-12) and torch.allclose(full.sizes, dense_s)


def test_tome_matches_bipartite_matching_reference():
    # The reference splits these tokens A = even, B = odd and keeps the unmerged A tokens in
    # their order: ToMe's code does that after an even number of prefix tokens (class and
    # distillation token). With P = 0 ToMe leaves them in score order, with P = 1 it shifts the
    # split (tests/test_tome_reference.py covers every case).
    x = clustered_tokens(2, 13, 5, seed=4)
    for b in range(2):
        matrix = TF.tome_matrix(x[b:b + 1], 8, num_prefix=2)
        tokens, sizes = ref.tome_merge(x[b], x[b], 13 - 8)
        assert torch.allclose(matrix.apply(x[b:b + 1])[0], tokens, atol=1e-12)
        assert torch.equal(matrix.sizes[0], sizes)


def test_evit_keeps_top_attended_and_fuses_the_rest():
    x = torch.randn(1, 8, 3, dtype=torch.float64)
    cls = torch.tensor([[0.1, 0.5, 0.05, 0.2, 0.01, 0.04, 0.06, 0.04]], dtype=torch.float64)
    y = TF.evit_matrix(cls, 4, None).apply(x)[0]
    assert torch.equal(y[:3], x[0, [1, 3, 0]])
    rest = [2, 4, 5, 6, 7]
    fused = (cls[0, rest, None] * x[0, rest]).sum(0) / cls[0, rest].sum()
    assert torch.allclose(y[3], fused, atol=1e-12)


def test_nearest_recovery_matches_eq9_and_composes():
    x = torch.randn(2, 15, 4, dtype=torch.float64)
    y = torch.randn(2, 6, 4, dtype=torch.float64)
    index = TF.nearest_recovery_index(x, y)
    for b in range(2):
        assert torch.equal(index[b], ref.nearest_index(x[b], y[b]))
    z = torch.randn(2, 3, 4, dtype=torch.float64)
    second = TF.nearest_recovery_index(y, z)
    both = TF.compose_recovery_index(index, second)
    assert both.shape == (2, 15)
    assert torch.equal(TF.recover_tokens(z, both), TF.recover_tokens(TF.recover_tokens(z, second), index))


def test_uniform_scores_pick_evenly_spaced_tokens():
    picks = TF.uniform_scores(2, 10, 4).topk(4, dim=1).indices.sort(dim=1).values
    assert picks.tolist() == [[0, 3, 6, 9]] * 2


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_up_to_tau_250(dtype):
    x = clustered_tokens(2, 40, 16, dtype=dtype) * 50   # large activations too
    scores = torch.rand(2, 40)
    w, s = TF.transform_matrix(x, scores, 12, 0.55, 250.0)
    assert w.dtype == dtype and torch.isfinite(w).all() and torch.isfinite(s).all()
    w32, _ = TF.transform_matrix(x.float(), scores, 12, 0.55, 250.0)
    assert torch.allclose(w.float(), w32, atol=2e-2)
    q, k, v = (torch.randn(1, 2, 40, 8).to(dtype) * 30 for _ in range(3))
    out, sc, _ = TF.attention_with_scores(q, k, v, TF.size_bias(s.new_ones(1, 40) * 3, dtype))
    assert torch.isfinite(out).all() and torch.isfinite(sc).all()


def test_gradients_reach_the_input():
    x = clustered_tokens(2, 12, 6).requires_grad_()
    w, s = TF.transform_matrix(x, torch.rand(2, 12, dtype=torch.float64), 5, 0.3, 20.0)
    ((w @ x).pow(2).sum() + s.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('call,needle', [
    (lambda x, s: TF.transform_matrix(x, s, 13, 0.5, 150.0), 'num_keep=13'),
    (lambda x, s: TF.transform_matrix(x, s, 0, 0.5, 150.0), 'num_keep=0'),
    (lambda x, s: TF.transform_matrix(x, s, 4, 1.5, 150.0), 'kappa=1.5'),
    (lambda x, s: TF.transform_matrix(x, s, 4, -1.2, 150.0), 'kappa=-1.2'),
    (lambda x, s: TF.transform_matrix(x, s, 4, 0.5, 0.0), 'tau=0.0'),
    (lambda x, s: TF.transform_matrix(x, s, 4, 0.5, -3), 'tau=-3'),
    (lambda x, s: TF.transform_matrix(x[0], s, 4, 0.5, 150.0), 'x must have 3 dims'),
    (lambda x, s: TF.transform_matrix(x, s[:1], 4, 0.5, 150.0), 'scores has size 1 in dim 0'),
    (lambda x, s: TF.transform_matrix(x, s[:, :5], 4, 0.5, 150.0), 'scores has size 5 in dim 1'),
    (lambda x, s: TF.transform_matrix(x, s, 4, 0.5, 150.0, s[:, :3]), 'sizes has size 3'),
    (lambda x, s: TF.transform_matrix(x, s, 4, 0.5, 150.0, similarity_kind='dot'), "similarity='dot'"),
    (lambda x, s: TF.informative_scores(x), 'attn must have 4 dims'),
    (lambda x, s: TF.nearest_recovery_index(x, x[:, :, :2]), 'y has size 2 in dim 2'),
    (lambda x, s: TF.tome_matrix(x, 5), 'num_keep=5 must be in [6, 12]'),
    (lambda x, s: TF.evit_matrix(s, 1), 'num_keep=1 must be in [2, 12]'),
    (lambda x, s: TF.transform_token_matrix(x, s, 4, 0.5, 150.0, top_k=0), 'top_k=0'),
    (lambda x, s: TF.transform_token_matrix(x, s, 4, 0.5, 150.0, top_k=2.5), 'top_k=2.5'),
])
def test_bad_input_names_the_parameter(call, needle):
    x, s = torch.randn(2, 12, 4), torch.rand(2, 12)
    with pytest.raises(ValueError, match=None) as info:
        call(x, s)
    assert needle in str(info.value)


def test_distinctness_and_mixed_scores():
    # tokens 0 and 1 are near-duplicates and the two most attended
    x = torch.tensor([[[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.1], [0.1, -1.0]]], dtype=torch.float64)
    d = TF.distinctness_scores(x)
    cos = torch.nn.functional.cosine_similarity(x[0][:, None], x[0][None], dim=-1)
    cos.fill_diagonal_(-2)
    assert torch.allclose(d[0], -cos.max(dim=1).values)
    informative = torch.tensor([[5.0, 4.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    assert set(informative.topk(2).indices[0].tolist()) == {0, 1}
    top2 = set(TF.mixed_scores(informative, x).topk(2).indices[0].tolist())
    assert len(top2 & {0, 1}) == 1   # one of the duplicates gives way to a distinct token


# --- fast paths: each against the explicit formulas or the materialised W -------------------

def test_mass_form_applies_eq6_without_forming_w_and_knows_each_tokens_largest_share():
    x = clustered_tokens(2, 30, 6, seed=7)
    scores = torch.rand(2, 30, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sizes = torch.randint(1, 5, (2, 30)).double()
    matrix = TF.transform_token_matrix(x, scores, 9, 0.3, 150.0, sizes)
    w, s = TF.transform_matrix(x, scores, 9, 0.3, 150.0, sizes)
    assert matrix.kind == 'mass' and matrix.weight.shape == (2, 30, 9)
    assert torch.allclose(matrix.apply(x), w @ x, atol=1e-12)
    assert torch.allclose(matrix.sizes, s, atol=1e-10)
    # largest_share: the query each token sends most of eq. 5's mass to, its most similar one.
    keep = scores.topk(9, dim=1).indices
    sim = TF.similarity(x.gather(1, keep[..., None].expand(-1, -1, 6)), x)   # [B, M, N]
    assert torch.equal(matrix.largest_share(), sim.argmax(dim=1))
    assert torch.equal(matrix.assignment(), w.argmax(dim=1))


def test_top_k_equals_the_softmax_of_the_top_k_gated_logits_with_nearest_orphans():
    x = clustered_tokens(1, 30, 6, seed=5)
    scores = torch.rand(1, 30, dtype=torch.float64)
    matrix = TF.transform_token_matrix(x, scores, 6, 0.8, 20.0, orphans='nearest', top_k=3)
    dense_w, _ = TF.transform_matrix(x, scores, 6, 0.8, 20.0, orphans='nearest')
    keep = scores.topk(6).indices
    sim = TF.similarity(x.gather(1, keep[..., None].expand(-1, -1, 6)), x)[0]    # [M, N]
    orphan = (sim < 0.8).all(dim=0)
    assert orphan.any() and not orphan.all()
    w = matrix.dense()[0]
    # an orphan column goes wholly to its nearest query, as in the dense W
    assert torch.equal(w[:, orphan] > 0, dense_w[0][:, orphan] > 0)
    assert torch.equal(matrix.largest_share()[0], sim.argmax(dim=0))


def test_similarity_ignores_autocast_so_w_is_the_same_under_bf16_autocast():
    x = clustered_tokens(2, 40, 16, dtype=torch.float32)
    scores = torch.rand(2, 40)
    plain = TF.transform_token_matrix(x, scores, 12, 0.55, 150.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        auto = TF.transform_token_matrix(x, scores, 12, 0.55, 150.0)
    assert auto.weight.dtype == torch.float32 and torch.equal(auto.weight, plain.weight)


@pytest.mark.parametrize('top_k,orphans', [(None, 'spread'), (None, 'nearest'), (3, 'spread'),
                                            (3, 'nearest')])
def test_mixed_build_shares_one_similarity_and_equals_mixed_scores_then_the_build(top_k, orphans):
    x = clustered_tokens(2, 40, 8, seed=3)
    informative = torch.rand(2, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, 40)).double()
    shared = TF.transform_token_matrix(x, informative, 12, 0.3, 150.0, sizes, top_k=top_k,
                                       orphans=orphans, mixed=True)
    separate = TF.transform_token_matrix(x, TF.mixed_scores(informative, x), 12, 0.3, 150.0,
                                         sizes, top_k=top_k, orphans=orphans)
    assert torch.allclose(shared.dense(), separate.dense(), atol=1e-12)
    assert torch.allclose(shared.sizes, separate.sizes, atol=1e-10)
    assert torch.equal(shared.largest_share(), separate.largest_share())
    # under bf16 autocast the selection and W are still the float32 ones
    x32, inf32 = x.float(), informative.float()
    plain = TF.transform_token_matrix(x32, inf32, 12, 0.3, 150.0, mixed=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        auto = TF.transform_token_matrix(x32, inf32, 12, 0.3, 150.0, mixed=True)
    assert torch.equal(auto.weight, plain.weight)


def test_sampled_scores_are_the_strided_column_sums_of_eq2():
    q, k, v, _, bias, attn = sized_attention_case(23, seed=3)
    for stride in (1, 3, 5):
        rows = list(range(0, 23, stride))
        expected = attn[:, :, rows].sum(dim=2).mean(dim=1)   # eq. 2 over the sampled rows
        informative, cls = TF.sampled_attention_scores(q, k, bias, stride, chunk_rows=2)
        if stride == 1:
            assert torch.allclose(informative, ref.informative_scores(attn), atol=1e-10)
        else:
            # the estimate rescales by N / rows
            assert torch.allclose(informative, expected * 23 / len(rows), atol=1e-10)
        assert torch.allclose(cls, TF.class_token_scores(attn), atol=1e-12)
        out, informative2, cls2 = TF.attention_with_scores(q, k, v, bias, score_stride=stride)
        assert torch.allclose(out, attn @ v, atol=1e-12)
        assert torch.allclose(informative2, informative, atol=1e-10) and torch.allclose(cls2, cls)


def test_sampled_scores_take_a_full_bias_row_by_row():
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(1, 2, 10, 4, generator=g, dtype=torch.float64) for _ in range(2))
    bias = torch.randn(1, 2, 10, 10, generator=g, dtype=torch.float64)
    attn = (q @ k.transpose(-2, -1) / 2.0 + bias).softmax(-1)
    informative, _ = TF.sampled_attention_scores(q, k, bias, 4)
    assert torch.allclose(informative, attn[:, :, ::4].sum(2).mean(1) * 10 / 3, atol=1e-12)


@pytest.mark.parametrize('stride', [0, 1.5, True])
def test_bad_score_stride_is_named(stride):
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match='score_stride'):
        TF.attention_with_scores(q, q, q, score_stride=stride)


@pytest.mark.parametrize('top_k', [None, 2])
@pytest.mark.parametrize('mixed', [False, True])
def test_anchor_makes_informative_columns_one_hot_and_keeps_eq5_for_the_others(top_k, mixed):
    x = clustered_tokens(2, 12, 5, seed=2)
    scores = torch.rand(2, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, 12)).double()
    matrix = TF.transform_token_matrix(x, scores, 5, -1.0, 20.0, sizes, top_k=top_k, mixed=mixed,
                                       anchor=True)
    ranked = TF.mixed_scores(scores, x) if mixed else scores
    for b in range(2):
        # Reference (the paper's m from tests/reference.py), then each informative token's
        # column one-hot on its own row; top_k keeps the k largest of the other columns'.
        _, _, m = ref.transform_matrix(x[b], ranked[b], 5, -1.0, 20.0)
        if top_k is not None:
            m = torch.where(m >= m.topk(top_k, dim=0).values[-1], m, 0.0)
            m = m / m.sum(0)
        keep = sorted(range(12), key=lambda j: -float(ranked[b, j]))[:5]
        for i, j in enumerate(keep):
            m[:, j] = 0.0
            m[i, j] = 1.0
        mass = m * sizes[b]
        assert torch.allclose(matrix.dense()[b], mass / mass.sum(1, keepdim=True), atol=1e-10)
        assert torch.allclose(matrix.sizes[b], mass.sum(1), atol=1e-10)
        assert matrix.largest_share()[b, keep].tolist() == list(range(5))
    assert torch.allclose(matrix.apply(x), matrix.dense() @ x, atol=1e-12)
    assert torch.allclose(matrix.sizes.sum(-1), sizes.sum(-1))


def test_anchor_must_be_a_bool():
    x = clustered_tokens(1, 8, 4, seed=1)
    with pytest.raises(ValueError, match='anchor=1'):
        TF.transform_token_matrix(x, torch.rand(1, 8, dtype=torch.float64), 3, 0.5, 150.0, anchor=1)


@pytest.mark.parametrize('stride', [1, 3])
def test_strided_distinctness_is_the_closest_of_every_sth_other_token(stride):
    x = clustered_tokens(2, 11, 4, seed=6)
    got = TF.distinctness_scores(x, stride)
    for b in range(2):
        for j in range(11):
            others = [k for k in range(0, 11, stride) if k != j]
            want = -max(ref.cosine(x[b, j], x[b, k]) for k in others)
            assert got[b, j].item() == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match='distinct_stride=0'):
        TF.distinctness_scores(x, 0)


@pytest.mark.parametrize('top_k,anchor', [(None, False), (3, False), (3, True)])
def test_mixed_build_with_a_distinct_stride_equals_strided_mixed_scores_then_the_build(top_k, anchor):
    x = clustered_tokens(2, 40, 8, seed=3)
    informative = torch.rand(2, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sizes = torch.randint(1, 4, (2, 40)).double()
    strided = TF.transform_token_matrix(x, informative, 12, 0.3, 150.0, sizes, top_k=top_k,
                                        mixed=True, anchor=anchor, distinct_stride=4)
    separate = TF.transform_token_matrix(x, TF.mixed_scores(informative, x, 4), 12, 0.3, 150.0,
                                         sizes, top_k=top_k, anchor=anchor)
    assert torch.allclose(strided.dense(), separate.dense(), atol=1e-12)
    assert torch.equal(strided.largest_share(), separate.largest_share())
    # (and the stride does change the ranking here, so the equality above is not the exact one's)
    assert not torch.equal(TF.mixed_scores(informative, x, 4), TF.mixed_scores(informative, x))


@pytest.mark.parametrize('batch', [1, 3])
def test_gather_rows_picks_each_batch_items_own_rows_and_passes_gradients(batch):
    from mmtt.functional._rows import gather_rows
    g = torch.Generator().manual_seed(batch)
    tokens = torch.randn(batch, 1 + 9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    x = tokens[:, 1:]   # a prefix sliced off, as hosts pass them: not contiguous over the batch
    index = torch.rand(batch, 9, generator=g).argsort(dim=1)[:, :4]
    got = gather_rows(x, index)
    for b in range(batch):
        for i in range(4):
            assert torch.equal(got[b, i], x[b, index[b, i]])
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * weights).sum(), tokens)
    want = torch.zeros_like(tokens)
    for b in range(batch):
        for i in range(4):
            want[b, 1 + index[b, i]] += weights[b, i]
    assert torch.equal(grad, want)


def test_add_rows_is_w_x_and_compiles_as_one_operator_with_the_same_values_and_gradients():
    import torch._dynamo as dynamo

    from mmtt.functional._rows import add_rows
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 4, (2, 2, 7), generator=g)
    weight = torch.rand(2, 2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(2, 4, 7, dtype=torch.float64)
    for b in range(2):
        for t in range(2):
            for j in range(7):
                w[b, index[b, t, j], j] += weight[b, t, j].item()
    eager = add_rows(x, index, weight, 4)
    torch.testing.assert_close(eager, w @ x.detach(), rtol=0, atol=1e-12)

    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm
    dynamo.reset()
    compiled = torch.compile(add_rows, backend=keep_graph, fullgraph=True)(x, index, weight, 4)
    dynamo.reset()
    # The compiler sees one opaque operator (inductor would otherwise generate its own loop).
    assert [str(n.target) for n in graphs[0].graph.nodes if n.op == 'call_function'] == ['mmtt.add_rows.default']
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    seed = torch.randn(eager.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad((eager * seed).sum(), (x, weight))
    got = torch.autograd.grad((compiled * seed).sum(), (x, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.library.opcheck(torch.ops.mmtt.add_rows.default, (x, index, weight, 4))
