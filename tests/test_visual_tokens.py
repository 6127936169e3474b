"""PruMerge, PruMerge+ and VisionZip as W forms: float64 equivalence with the authors' code
(tests/reference_llava.py), the LLaVA host end to end against the authors' reductions of an
unpatched model, and visual_tokens budgets for every method."""
import pytest
import reference_llava as ref
import torch

from mmtt.functional.visual_tokens import iqr_outlier_count, prumerge_matrix, visionzip_matrix

transformers = pytest.importorskip('transformers')
from test_transformers import IMAGE, batch, encoder_of, lm_lengths, make_llava, pixels, prompt  # noqa: E402
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from mmtt.hosts import transformers as tp  # noqa: E402


def qk(batch_size, n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A few strongly attended tokens, as CLIP's class attention has: IQR outliers exist.
    q = torch.randn(batch_size, 1 + n, c, generator=g, dtype=torch.float64)
    k = torch.randn(batch_size, 1 + n, c, generator=g, dtype=torch.float64)
    k[:, 1:6] += 3 * q[:, :1]
    return q, k


@pytest.mark.parametrize('plus', [False, True])
def test_prumerge_matches_the_authors_adaptive_code(plus):
    n, c = 144, 16
    q, k = qk(1, n, c)
    x = torch.randn(1, n, c, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = ref.prumerge(x, q, k, plus=plus)
    cls = ((q[:, :1] @ k.transpose(1, 2))[:, 0] * c ** -0.5).softmax(-1)[:, 1:]
    matrix = prumerge_matrix(k[:, 1:], cls, None, plus=plus)
    torch.testing.assert_close(matrix.apply(x), expected)
    assert int(iqr_outlier_count(cls)) == round(ref.outlier_ratio(cls) * n)


def test_prumerge_at_a_budget_matches_the_authors_topk_and_counts_exactly():
    n, c = 64, 8
    q, k = qk(2, n, c, seed=1)
    x = torch.randn(2, n, c, dtype=torch.float64)
    cls = ((q[:, :1] @ k.transpose(1, 2))[:, 0] * c ** -0.5).softmax(-1)[:, 1:]
    for b in range(2):   # the authors' loop runs one image at a time here: its topk is per image
        expected = ref.prumerge(x[b:b + 1], q[b:b + 1], k[b:b + 1], neighbours=32, left_tokens=20)
        torch.testing.assert_close(prumerge_matrix(k[b:b + 1, 1:], cls[b:b + 1], 20).apply(x[b:b + 1]),
                                   expected)
    plus = prumerge_matrix(k[:, 1:], cls, 20, plus=True)
    assert plus.weight.shape == (2, 21, n)
    outliers = cls.topk(int(iqr_outlier_count(cls).min()), dim=1).indices
    kept = (plus.weight[:, :20] == 1).float().argmax(dim=2)
    assert all(set(outliers[b].tolist()) <= set(kept[b].tolist()) for b in range(2))
    assert all(len(set(kept[b].tolist())) == 20 for b in range(2))
    with pytest.raises(ValueError, match='num_keep=64 must be in'):
        prumerge_matrix(k[:, 1:], cls, 64)


def test_visionzip_matches_the_authors_code():
    n, c, heads = 100, 16, 4
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 1 + n, c, dtype=torch.float64, generator=g)
    attn = torch.randn(2, heads, 1 + n, 1 + n, dtype=torch.float64, generator=g).softmax(-1)
    keys = torch.randn(2, 1 + n, 8, dtype=torch.float64, generator=g)
    for dominant, contextual in ((54, 10), (20, 7), (1, 30), (11, 0)):
        matrix = visionzip_matrix(attn[:, :, 0, 1:].mean(dim=1), keys, dominant, contextual)
        if contextual:
            expected = ref.visionzip(hidden, attn, keys, dominant - 1, contextual)
        else:
            expected = ref.visionzip(hidden, attn, keys, dominant - 1, 1)[:, :dominant]
        torch.testing.assert_close(matrix.apply(hidden), expected)
    with pytest.raises(ValueError, match='dominant=60, contextual=50'):
        visionzip_matrix(attn[:, :, 0, 1:].mean(dim=1), keys, 60, 50)


def hooked(model, layer):
    """The outputs of ``layer``'s q_proj and k_proj in the next forward (the authors' hooks)."""
    seen = {}
    attn = encoder_of(model).layers[layer].self_attn
    handles = [attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__('q', o)),
               attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__('k', o))]
    return seen, handles


def features(model, x):
    out = model.get_image_features(x, -2, 'default')
    return torch.stack(out.pooler_output) if tp.V5 else out


@pytest.mark.parametrize('method', ['prumerge', 'visionzip'])
def test_llava_host_gives_the_authors_features(method):
    model = make_llava(attn='eager').double()
    x = pixels(2).double()
    tower = tp._llava_tower(model)
    with torch.no_grad():
        seen, handles = hooked(model, 3)
        out = tower(x, output_hidden_states=True, output_attentions=True)
        for h in handles:
            h.remove()
        hidden = out.hidden_states[-2]
        if method == 'prumerge':
            expected = torch.cat([ref.prumerge(hidden[b:b + 1, 1:], seen['q'][b:b + 1], seen['k'][b:b + 1],
                                               neighbours=15, left_tokens=5) for b in range(2)])
        else:
            # The feature layer's head-averaged keys, as VisionZip's attention returns them.
            seen, handles = hooked(model, 2)
            tower(x, output_hidden_states=True)
            for h in handles:
                h.remove()
            keys = seen['k'].view(2, 17, 4, 8).mean(dim=2)
            expected = ref.visionzip(hidden, out.attentions[2], keys, 4, 1)
        expected = (model.model if tp.V5 else model).multi_modal_projector(expected)
        extra = dict(contextual=1) if method == 'visionzip' else {}
        tp.apply_patch(model, method=method, visual_tokens=6, **extra)
        # transformers 5's eager attention takes its softmax in float32, even in a float64 model.
        tolerance = dict(rtol=1e-4, atol=1e-3) if tp.V5 else {}
        torch.testing.assert_close(features(model, x), expected, **tolerance)
        assert model.visual_tokens(16) == 6
    tp.remove_patch(model)
    assert type(encoder_of(model).layers[3].self_attn).__name__ in ('CLIPAttention', 'CLIPSdpaAttention')


@pytest.mark.parametrize('method', ['prumerge', 'prumerge+', 'visionzip', 'transform', 'tome'])
def test_llava_visual_token_budgets_reach_the_language_model(method):
    model = make_llava()
    ids, mask = batch(prompt(1, 5, 'img', 6, 'img', 7), prompt(1, 'img', 8))
    x = pixels(3)
    with torch.no_grad():
        ref_logits = model(input_ids=ids, pixel_values=x, attention_mask=mask).logits
    kwargs = dict(reduce_layers=(0, 1)) if method in ('transform', 'tome') else {}
    tp.apply_patch(model, method=method, visual_tokens=8, **kwargs)
    assert model.visual_tokens(16) == 8
    seen = lm_lengths(model)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=x, max_new_tokens=3,
                             do_sample=False)
    assert seen[0] == ids.shape[1] - 2 * (16 - 8) and seen[1:] == [1, 1]
    assert torch.equal(out[:, :ids.shape[1]], ids)
    tp.remove_patch(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=x, attention_mask=mask).logits, ref_logits)


def test_llava_15_budgets_are_exact_for_every_method():
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=24, num_attention_heads=4,
                                                    image_size=336, patch_size=14),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, vocab_size=64), image_token_index=IMAGE)
    llava = LlavaForConditionalGeneration(config).eval()
    x = torch.randn(1, 3, 336, 336)
    for method in ('transform', 'tome', 'evit', 'prune', 'prumerge', 'prumerge+', 'visionzip'):
        for tokens in (64, 128, 192):
            tp.apply_patch(llava, method=method, visual_tokens=tokens)
            assert llava.visual_tokens(576) == tokens, (method, tokens)
            if tokens == 64:
                with torch.no_grad():
                    assert features(llava, x).shape[1] == 64
            tp.remove_patch(llava)


@pytest.mark.parametrize('kwargs,match', [
    (dict(method='prumerge', visual_tokens=1), 'visual_tokens=1 is out of reach'),
    (dict(method='visionzip', visual_tokens=17), 'visual_tokens=17 is out of reach'),
    (dict(method='prumerge', visual_tokens=8, reduce_layers=(0,)), "reduce_layers=\\(0,\\) does not apply"),
    (dict(method='tome', visual_tokens=2, reduce_layers=(0,)), 'visual_tokens=2 is out of reach'),
    (dict(visual_tokens=0, reduce_layers=(0,)), 'visual_tokens=0 must be a positive int'),
    (dict(method='transform', contextual=3, reduce_layers=(0,)), "contextual=3 applies only"),
])
def test_bad_budgets_are_named(kwargs, match):
    model = make_llava()
    with pytest.raises(ValueError, match=match):
        tp.apply_patch(model, **kwargs)
    assert type(model) is LlavaForConditionalGeneration


def test_clip_vision_model_refuses_the_llava_only_settings():
    from test_transformers import vision_config
    from transformers import CLIPVisionModel
    with pytest.raises(ValueError, match='visual_tokens applies to a LLaVA'):
        tp.apply_patch(CLIPVisionModel(vision_config()), visual_tokens=4, reduce_layers=(0,))
    with pytest.raises(ValueError, match="method='visionzip' reduces a LLaVA"):
        tp.apply_patch(CLIPVisionModel(vision_config()), method='visionzip')
