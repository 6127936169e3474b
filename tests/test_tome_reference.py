"""``method='tome'`` against ToMe as its code runs it (facebookresearch/ToMe ``tome/merge.py``
``bipartite_soft_matching`` + ``merge_wavg``, ``tome/patch/timm.py``), written out here in
float64 loops, independent of mmtt and of ToMe's package.

What the reference reproduces from ToMe's code, beyond the paper: the A/B alternation runs over
the whole sequence, prefix tokens included (class token at position 0 in A, its scores -inf;
distillation token at position 1 in B, -inf as a destination); at most ``(T - protected) // 2``
tokens merge; the unmerged A tokens are re-sorted to their original order only when there is a
class token; the output is the unmerged A tokens then the B tokens (prefix tokens first).
"""
import math
from typing import List, Optional, Sequence, Tuple

import pytest
import timm
import torch
from torch import Tensor

from mmtt import functional as TF
from mmtt.hosts.timm import apply_patch
from mmtt.modules import TokenTransform


def tome_merge_reference(x: Tensor, metric: Tensor, size: Tensor, r: int,
                         num_prefix: int) -> Tuple[Tensor, Tensor]:
    """One ToMe merge of one image: ``x [T, C]``, ``metric [T, C']``, ``size [T]`` (prefix
    tokens included) -> ``(x [T - r, C], size [T - r])``, all float64.

    For ``num_prefix`` 0, 1, 2 this is ToMe's ``bipartite_soft_matching(metric, r,
    class_token=num_prefix >= 1, distill_token=num_prefix == 2)`` with ``merge_wavg``. Larger
    ``num_prefix`` (register tokens) extends the same rule: every prefix token at an even
    position is a protected A token, every one at an odd position a protected B token.
    """
    x, metric, size = x.double(), metric.double(), size.double()
    t = x.shape[0]
    r = min(r, (t - num_prefix) // 2)
    if r <= 0:
        return x, size
    a_pos, b_pos = list(range(0, t, 2)), list(range(1, t, 2))
    unit = [metric[i] / math.sqrt(float(metric[i] @ metric[i])) for i in range(t)]
    best: List[Tuple[float, int]] = []
    for a in a_pos:
        sims = [float(unit[a] @ unit[b]) for b in b_pos]
        if a < num_prefix:                      # class token (or an A-side prefix token)
            sims = [-math.inf] * len(b_pos)
        sims = [-math.inf if b < num_prefix else s for b, s in zip(b_pos, sims)]   # distill
        k = max(range(len(b_pos)), key=lambda i: sims[i])
        best.append((sims[k], k))
    edge = sorted(range(len(a_pos)), key=lambda i: -best[i][0])   # argsort, descending
    src, unm = edge[:r], edge[r:]
    if num_prefix >= 1:                         # ToMe: "sort to ensure the class token is at the start"
        unm = sorted(unm)
    # merge_wavg: sum of x * size and of size per destination, then divide.
    dst_sum = [x[b] * size[b] for b in b_pos]
    dst_size = [size[b].clone() for b in b_pos]
    for i in src:
        a, k = a_pos[i], best[i][1]
        dst_sum[k] = dst_sum[k] + x[a] * size[a]
        dst_size[k] = dst_size[k] + size[a]
    unm_rows = [(x[a_pos[i]] * size[a_pos[i]], size[a_pos[i]]) for i in unm]
    dst_rows = list(zip(dst_sum, dst_size))
    # ToMe orders [unm, dst], or with a distillation token [unm[:1], dst[:1], unm[1:], dst[1:]]:
    # prefix tokens first, in their order, then the unmerged A tokens, then the B tokens.
    prefix = [unm_rows[p // 2] if p % 2 == 0 else dst_rows[p // 2] for p in range(num_prefix)]
    num_prefix_a, num_prefix_b = (num_prefix + 1) // 2, num_prefix // 2
    rows = prefix + unm_rows[num_prefix_a:] + dst_rows[num_prefix_b:]
    out_size = torch.stack([s for _, s in rows])
    return torch.stack([v for v, _ in rows]) / out_size[:, None], out_size


def mmtt_merge(x: Tensor, metric: Tensor, size: Tensor, num_keep: int, num_prefix: int):
    """mmtt's functional ToMe on the non-prefix tokens, prefix tokens put back in front."""
    matrix = TF.tome_matrix(metric[:, num_prefix:], num_keep, size[:, num_prefix:],
                            num_prefix=num_prefix)
    out = torch.cat([x[:, :num_prefix], matrix.apply(x[:, num_prefix:])], dim=1)
    return out, torch.cat([size[:, :num_prefix], matrix.sizes], dim=1), matrix


def random_case(batch: int, num_prefix: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    t = num_prefix + n
    x = torch.randn(batch, t, 6, generator=g, dtype=torch.float64)
    metric = torch.randn(batch, t, 5, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (batch, t), generator=g).double()
    size[:, :num_prefix] = 1.0
    return x, metric, size


@pytest.mark.parametrize('num_prefix', [0, 1, 2])
@pytest.mark.parametrize('n', [2, 3, 8, 13, 20])
def test_functional_tome_equals_tome_code(num_prefix, n):
    worst = 0.0
    for seed in range(3):
        x, metric, size = random_case(3, num_prefix, n, seed)
        for r in range(0, n // 2 + 1):
            out, out_size, matrix = mmtt_merge(x, metric, size, n - r, num_prefix)
            assert out.shape == (3, num_prefix + n - r, 6)
            for b in range(3):
                ref_x, ref_size = tome_merge_reference(x[b], metric[b], size[b], r, num_prefix)
                assert torch.equal(out_size[b], ref_size)
                worst = max(worst, float((out[b] - ref_x).abs().max()))
            # The cheap apply is W X for the W it stands for.
            assert torch.allclose(matrix.apply(x[:, num_prefix:]), matrix.dense() @ x[:, num_prefix:],
                                  atol=1e-12, rtol=0)
    assert worst < 1e-12, worst


@pytest.mark.parametrize('num_prefix', [0, 1, 2])
def test_module_tome_equals_tome_code(num_prefix):
    """TokenTransform passes its num_prefix on, and its keep count never merges more than ToMe."""
    transform = TokenTransform(keep_ratio=0.5, method='tome')
    for n in (5, 7, 12, 17):
        x, metric, size = random_case(2, num_prefix, n, seed=n)
        out = transform(x, size, num_prefix=num_prefix, metric=metric)
        r = num_prefix + n - out.tokens.shape[1]
        assert r == n // 2                       # ToMe's cap, also for odd n
        for b in range(2):
            ref_x, ref_size = tome_merge_reference(x[b], metric[b], size[b], r, num_prefix)
            assert torch.allclose(out.tokens[b], ref_x, atol=1e-12, rtol=0)
            assert torch.equal(out.sizes[b], ref_size)


@pytest.mark.parametrize('num_prefix', [3, 4, 5])
def test_register_tokens_follow_the_position_parity_rule(num_prefix):
    """P > 2 (e.g. class + register tokens): the documented extension of ToMe's rule."""
    x, metric, size = random_case(2, num_prefix, 15, seed=num_prefix)
    out, out_size, _ = mmtt_merge(x, metric, size, 15 - 6, num_prefix)
    for b in range(2):
        ref_x, ref_size = tome_merge_reference(x[b], metric[b], size[b], 6, num_prefix)
        assert torch.allclose(out[b], ref_x, atol=1e-12, rtol=0) and torch.equal(out_size[b], ref_size)
    # Only the parity of P and whether it is 0 matter.
    same = TF.tome_matrix(metric[:, num_prefix:], 9, size[:, num_prefix:], num_prefix=2 - num_prefix % 2)
    assert torch.equal(same.apply(x[:, num_prefix:]), out[:, num_prefix:])


def test_without_prefix_unmerged_tokens_keep_tomes_edge_order():
    """P = 0: ToMe does not re-sort the unmerged A tokens; they come by decreasing best score."""
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.5], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0]]])
    x = torch.arange(6.0).view(1, 6, 1)
    # A = tokens 0, 2, 4 and B = 1, 3, 5; best scores 1.0 (0 -> 1), 0.89 (2 -> 5), 0.995 (4 -> 3).
    # r = 1 merges token 0 into 1; the unmerged A tokens come as 4, 2 (ToMe's edge order).
    y = TF.tome_matrix(metric, 5, num_prefix=0).apply(x)[0, :, 0].tolist()
    assert y == [4.0, 2.0, 0.5, 3.0, 5.0]
    # With a prefix of even length (the same split) they are re-sorted, as ToMe does with a class token.
    assert TF.tome_matrix(metric, 5, num_prefix=2).apply(x)[0, :, 0].tolist() == [2.0, 4.0, 0.5, 3.0, 5.0]


def test_bad_num_prefix_is_named():
    with pytest.raises(ValueError, match='num_prefix=-1'):
        TF.tome_matrix(torch.randn(1, 6, 3), 4, num_prefix=-1)
    with pytest.raises(ValueError, match='num_prefix=1.5'):
        TF.tome_matrix(torch.randn(1, 6, 3), 4, num_prefix=1.5)


# --- the patched timm ViT against ToMe's patched timm forward ---------------------------------

def tome_forward_features(model, images: Tensor, merges: Sequence[int]) -> Tuple[Tensor, List[int]]:
    """ToMe's ``ToMeBlock`` / ``ToMeAttention`` forward on ``model``'s weights: plain softmax
    attention with ``log s`` added to the logits (proportional attention), ToMe merging between
    attention and MLP on the head-averaged keys, size-weighted average merge. ``merges[i]`` is
    the r of block i. Returns the features and the token count after each block."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    num_prefix = model.num_prefix_tokens
    size: Optional[Tensor] = None
    counts = []
    for blk, r in zip(model.blocks, merges):
        attn = blk.attn
        h = blk.norm1(x)
        batch, t, _ = h.shape
        q, k, v = attn.qkv(h).reshape(batch, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        if size is not None:
            logits = logits + size.log()[:, None, None, :]
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, t, attn.attn_dim)
        x = x + blk.ls1(attn.proj(attn.norm(out)))
        if r > 0:
            metric = k.mean(dim=1)
            sizes = torch.ones(batch, t, dtype=x.dtype) if size is None else size
            merged = [tome_merge_reference(x[b], metric[b], sizes[b], r, num_prefix) for b in range(batch)]
            x = torch.stack([m[0] for m in merged])
            size = torch.stack([m[1] for m in merged])
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        counts.append(x.shape[1])
    return model.norm(x), counts


def schedule(model, keep_ratio: float, layers: Sequence[int], num_patches: int) -> List[int]:
    """ToMe's per-block r for mmtt's keep count (the schedule is an input, not under test)."""
    merges, n = [], num_patches
    for i in range(len(model.blocks)):
        r = n - max(n - n // 2, round(keep_ratio * n)) if i in layers else 0
        merges.append(r)
        n -= r
    return merges


TIMM_MODELS = {
    'vit': dict(model_name='vit_small_patch16_224'),
    'deit-distilled': dict(model_name='deit_small_distilled_patch16_224'),
    'no-class-token': dict(model_name='vit_small_patch16_224', class_token=False, global_pool='avg'),
}


@pytest.mark.parametrize('name', list(TIMM_MODELS))
def test_patched_timm_vit_equals_tome_forward(name):
    torch.manual_seed(0)
    # Random init, ViT-S's depth and schedule at a small width; 112 px gives 49 (odd) patches.
    model = timm.create_model(**TIMM_MODELS[name], pretrained=False, embed_dim=64, num_heads=4,
                              img_size=112).eval().double()
    images = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    layers = (3, 6, 9)
    merges = schedule(model, 0.7, layers, 49)
    with torch.no_grad():
        ref, counts = tome_forward_features(model, images, merges)
        ref_logits = model.forward_head(ref)
        apply_patch(model, method='tome', keep_ratio=0.7, layers=layers)
        got = model.forward_features(images)
        logits = model(images)
    assert counts[-1] == model.num_prefix_tokens + 49 - sum(merges) and sum(merges) > 0
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-10 * max(1.0, float(ref.abs().max()))
    if name != 'no-class-token':
        # With avg pooling mmtt weights the mean by size; ToMe's timm patch keeps timm's plain mean.
        assert torch.allclose(logits, ref_logits, atol=1e-10, rtol=0)
