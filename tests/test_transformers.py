"""HF transformers: CLIP vision encoders and LLaVA-1.5 with fewer visual tokens (tiny random
configs, no downloads): exactness at ratio 1 and after undo, the shortened prompt, generate
with its KV cache against a full forward, batches, several images, bad settings."""
import io
import pickle

import pytest
import torch

transformers = pytest.importorskip('transformers')
from transformers import (  # noqa: E402
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.models.clip import modeling_clip  # noqa: E402
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPEncoderLayer  # noqa: E402

from mmtt.hosts import transformers as tp  # noqa: E402

# 4.51's SDPA attention class; transformers 5 has one CLIPAttention for every kernel.
SDPA_ATTENTION = getattr(modeling_clip, 'CLIPSdpaAttention', modeling_clip.CLIPAttention)

IMAGE = 63   # image placeholder id
PAD = 0
PATCHES = 16   # 28 px images, 7 px patches
METHODS = ['transform', 'tome', 'evit', 'prune']


def vision_config(layers=4, size=28, patch=7, attn='sdpa'):
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=size, patch_size=patch)
    config._attn_implementation = attn
    return config


def make_llava(attn='sdpa', **config_kwargs):
    torch.manual_seed(0)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=64, pad_token_id=PAD, bos_token_id=1,
                       eos_token_id=2)
    config = LlavaConfig(vision_config=vision_config(attn=attn), text_config=text,
                         image_token_index=IMAGE, pad_token_id=PAD, image_seq_length=PATCHES,
                         **config_kwargs)
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():   # HF's LLaVA init is tiny (std 0.02): make the logits differ visibly
        for p in model.parameters():
            p.mul_(20 if p.dim() > 1 else 1)
    return model


def encoder_of(model):
    return tp._vision_root(tp._llava_tower(model)).encoder


def language_model(model):
    return model.model.language_model if tp.V5 else model.language_model


def image_features(model, pixel_values, *args):
    out = model.get_image_features(pixel_values, *args)
    return torch.stack(out.pooler_output) if tp.V5 else out


def prompt(*parts):
    """Token ids: ints as themselves, 'img' as one image's PATCHES placeholders."""
    ids = []
    for part in parts:
        ids += [IMAGE] * PATCHES if part == 'img' else [part]
    return ids


def batch(*rows):
    """Left-padded ``input_ids`` and ``attention_mask`` (the LLaVA processor's padding side)."""
    length = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def pixels(n, seed=1):
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def lm_lengths(model):
    """Records the sequence length the language model receives in each call."""
    seen = []
    language_model(model).register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs['inputs_embeds'].shape[1]), with_kwargs=True)
    return seen


@pytest.mark.parametrize('method', METHODS)
def test_ratio_one_and_remove_patch_reproduce_hf_exactly(method):
    model = make_llava()
    ids, mask = batch(prompt(1, 5, 'img', 6, 7), prompt(1, 'img', 8))
    x = pixels(2)
    keys = list(model.state_dict())
    layer_vars = set(vars(encoder_of(model).layers[0]))
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=x, attention_mask=mask).logits
        tp.apply_patch(model, method=method, keep_ratio=1.0, reduce_layers=(0, 2))
        assert torch.equal(model(input_ids=ids, pixel_values=x, attention_mask=mask).logits, ref)
        tp.remove_patch(model)
        tp.apply_patch(model, method=method, keep_ratio=0.5, reduce_layers=(0, 2))
        assert list(model.state_dict()) == keys   # no new parameters or buffers
        reduced = model(input_ids=ids, pixel_values=x, attention_mask=mask).logits
        tp.remove_patch(model)
        assert type(model) is LlavaForConditionalGeneration
        encoder = encoder_of(model)
        assert type(encoder) is CLIPEncoder
        assert all(type(layer) is CLIPEncoderLayer and type(layer.self_attn) is SDPA_ATTENTION
                   for layer in encoder.layers)
        assert set(vars(encoder.layers[0])) == layer_vars
        assert torch.equal(model(input_ids=ids, pixel_values=x, attention_mask=mask).logits, ref)
    assert reduced.shape[1] == ref.shape[1] - (PATCHES - 4)
    assert torch.isfinite(reduced).all()


@pytest.mark.parametrize('method', METHODS)
def test_language_model_receives_the_kept_visual_tokens(method):
    model = make_llava()
    tp.apply_patch(model, method=method, keep_ratio=0.5, reduce_layers=(0, 2))   # 16 -> 8 -> 4
    assert model.visual_tokens(PATCHES) == 4
    seen = lm_lengths(model)
    ids = torch.tensor([prompt(1, 5, 'img', 6, 7)])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels(1))
    assert seen == [4 + 4]
    features = out.image_outputs.pooler_output[0][None] if tp.V5 else out.image_hidden_states
    assert features.shape == (1, 4, 32)


def test_feature_layer_and_strategy_are_the_models():
    # 'full' keeps the class token among the features; the feature layer is the last one here.
    model = make_llava(vision_feature_select_strategy='full', vision_feature_layer=-1)
    tp.apply_patch(model, keep_ratio=0.5, reduce_layers=(3,))
    assert model.visual_tokens(PATCHES) == 1 + 8
    ids = torch.tensor([[1] + [IMAGE] * (PATCHES + 1) + [5]])
    seen = lm_lengths(model)
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixels(1))
    assert seen == [2 + 9]
    # A list of feature layers is concatenated: its layers must have one token count.
    model = make_llava(vision_feature_layer=[-3, -2])
    tp.apply_patch(model, keep_ratio=0.5, reduce_layers=(0, 1))
    assert model.visual_tokens(PATCHES) == 4
    with pytest.raises(ValueError, match=r'reduce_layers=\[2\] come after the feature layer'):
        tp.apply_patch(make_llava(vision_feature_layer=[-3, -2]), keep_ratio=0.5, reduce_layers=(2,))


def test_generate_matches_a_full_forward_with_cache_batch_and_several_images():
    model = make_llava()
    tp.apply_patch(model, keep_ratio=0.5, reduce_layers=(0, 2))
    # Two prompts of different lengths; the first has two images, so the rows lose different
    # numbers of placeholders and are re-padded.
    rows = [prompt(1, 5, 'img', 6, 'img', 7), prompt(1, 9, 9, 'img', 8)]
    ids, mask = batch(*rows)
    x = pixels(3)
    seen = lm_lengths(model)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=x, max_new_tokens=4,
                             do_sample=False, return_dict_in_generate=True, output_logits=True)
    new = out.sequences[:, ids.shape[1]:]
    assert torch.equal(out.sequences[:, :ids.shape[1]], ids)   # the caller's prompt, unshortened
    assert new.shape == (2, 4)
    assert seen[0] == max(len(r) for r in rows) - 2 * (PATCHES - 4) and seen[1:] == [1, 1, 1]
    # Without a cache: the whole sequence, placeholders as the processor wrote them.
    full = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=full_mask, pixel_values=x).logits
    steps = torch.stack(out.logits, dim=1)   # [B, 4, V]: the logits each cached step chose by
    torch.testing.assert_close(logits[:, -5:-1], steps, rtol=1e-4, atol=1e-4)
    with torch.no_grad():   # beam search expands the batch: each sequence keeps its own prompt
        beams = model.generate(input_ids=ids, attention_mask=mask, pixel_values=x, max_new_tokens=2,
                               num_beams=2, num_return_sequences=2, do_sample=False)
    assert torch.equal(beams[:, :ids.shape[1]], ids.repeat_interleave(2, dim=0))
    # Each row alone gives the same continuation as in the batch.
    for r, images in ((0, x[:2]), (1, x[2:])):
        one = torch.tensor([rows[r]])
        with torch.no_grad():
            alone = model.generate(input_ids=one, pixel_values=images, max_new_tokens=4,
                                   do_sample=False, attention_mask=torch.ones_like(one))
        assert torch.equal(alone[0, one.shape[1]:], new[r])


def test_shorten_inputs_keeps_positions_and_labels_consistent():
    model = make_llava()
    tp.apply_patch(model, keep_ratio=0.5, reduce_layers=(0, 2))
    ids, mask = batch(prompt(1, 'img', 5), prompt(1, 'img', 6, 'img', 7))
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    labels = torch.where(ids == IMAGE, -100, ids)
    short = tp.shorten_inputs(model, ids, pixels(3), mask, positions, labels)
    assert short.input_ids.tolist() == [[PAD] * 5 + [1] + [IMAGE] * 4 + [5],
                                        [1] + [IMAGE] * 4 + [6] + [IMAGE] * 4 + [7]]
    assert short.attention_mask.tolist() == [[0] * 5 + [1] * 6, [1] * 11]
    assert short.position_ids[1].tolist() == list(range(11))
    assert short.position_ids[0, 5:].tolist() == list(range(6))
    assert short.labels[1].tolist() == [1] + [-100] * 4 + [6] + [-100] * 4 + [7]
    # Right padding stays on the right; without a mask, rows are padded on the left.
    right = tp.shorten_inputs(model, ids.flip(1), pixels(3), mask.flip(1))
    assert right.attention_mask.tolist() == [[1] * 6 + [0] * 5, [1] * 11]
    unmasked = tp.shorten_inputs(model, ids, pixels(3))   # row 0's old padding is kept as tokens
    assert unmasked.input_ids[1].tolist() == [PAD] * 12 + [1] + [IMAGE] * 4 + [6] + [IMAGE] * 4 + [7]
    assert unmasked.attention_mask.tolist() == [[1] * 23, [0] * 12 + [1] * 11]
    # Already short: nothing to do; a wrong count is named.
    assert tp.shorten_inputs(model, short.input_ids, pixels(3), short.attention_mask) is None
    with pytest.raises(ValueError, match='input_ids hold 15 image placeholder tokens'):
        tp.shorten_inputs(model, torch.tensor([[1] + [IMAGE] * 15]), pixels(1))
    # A forward with labels computes its loss on the shortened sequence.
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(3), labels=labels)
    assert out.logits.shape[1] == 11 and torch.isfinite(out.loss)


@pytest.mark.parametrize('attn', ['sdpa', 'eager'])
def test_clip_vision_model_reduces_and_keeps_the_class_token(attn):
    torch.manual_seed(0)
    model = CLIPVisionModel(vision_config(attn=attn)).eval()
    x = pixels(2)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
        tp.apply_patch(model, method='transform', keep_ratio=0.5, reduce_layers=(1,))
        out = model(x, output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [17, 17, 9, 9, 9]
    with torch.no_grad():   # HF's eager fallback for attention weights takes the size bias too
        weights = model(x, output_attentions=True).attentions
    if not tp.V5:
        assert weights[1] is None and weights[2].shape == (2, 4, 9, 9)
    elif attn == 'eager':   # transformers 5 records the weights of the layers that return them
        assert [w.shape[-1] for w in weights] == [17, 9, 9]
    assert out.last_hidden_state.shape == (2, 9, 32)
    torch.testing.assert_close(out.hidden_states[1], ref.hidden_states[1])   # before the reduction
    assert not torch.allclose(out.pooler_output, ref.pooler_output)
    # Eager and SDPA agree on the reduced model too (the size bias reaches both).
    other = CLIPVisionModel(vision_config(attn='eager' if attn == 'sdpa' else 'sdpa')).eval()
    other.load_state_dict(model.state_dict())
    tp.apply_patch(other, method='transform', keep_ratio=0.5, reduce_layers=(1,))
    with torch.no_grad():
        torch.testing.assert_close(other(x).last_hidden_state, out.last_hidden_state,
                                   rtol=1e-4, atol=1e-4)


def test_presets_give_the_stated_visual_tokens():
    torch.manual_seed(0)
    config = vision_config(layers=24, size=336, patch=14)   # CLIP ViT-L/14-336's token grid
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=config, text_config=LlamaConfig(hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=1, num_attention_heads=4,
                                                      vocab_size=64),
        image_token_index=IMAGE))
    for preset, tokens in (('llava-1.5/32', 32), ('llava-1.5/144', 144)):
        tp.apply_patch(llava, preset=preset)
        assert llava.visual_tokens(576) == tokens
        with torch.no_grad():
            features = image_features(llava, torch.randn(1, 3, 336, 336), -2, 'default')
        assert features.shape[1] == tokens
        tp.remove_patch(llava)


def test_gradient_checkpointing_and_pickling():
    torch.manual_seed(0)
    model = CLIPVisionModel(vision_config())
    tp.apply_patch(model, keep_ratio=0.5, reduce_layers=(0, 2))
    x = pixels(2)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        out = model(x)
        (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    model.gradient_checkpointing_disable()
    model.eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=False)
    copy = pickle.loads(pickle.dumps(copy))
    with torch.no_grad():
        assert torch.equal(copy(x).last_hidden_state, model(x).last_hidden_state)


def test_an_accelerate_style_hook_calls_the_patched_forward():
    torch.manual_seed(0)
    model = CLIPVisionModel(vision_config()).eval()
    layer = tp._vision_root(model).encoder.layers[1]
    # What accelerate's add_hook_to_module does: forward calls the saved _old_forward.
    layer._old_forward = layer.forward
    layer.forward = lambda *args, **kwargs: layer._old_forward(*args, **kwargs)
    tp.apply_patch(model, keep_ratio=0.5, reduce_layers=(1,))
    with torch.no_grad():
        assert model(pixels(1)).last_hidden_state.shape[1] == 9
    tp.remove_patch(model)
    assert layer._old_forward.__func__ is CLIPEncoderLayer.forward


@pytest.mark.parametrize('kwargs,match', [
    (dict(keep_ratio=1.5, reduce_layers=(0,)), 'keep_ratio=1.5'),
    (dict(method='merge', reduce_layers=(0,)), "method='merge'"),
    (dict(reduce_layers=(7,)), r'reduce_layers=\[7\] out of range'),
    (dict(reduce_layers=(3,)), r'reduce_layers=\[3\] come after the feature layer'),
    (dict(layers=3), 'layers=3 must be a sequence'),
    (dict(reduce_layers=None), 'reduce_layers=None'),
    (dict(reduce_layers=(0,), kapa=0.5), 'unknown apply_patch key kapa=0.5'),
    (dict(reduce_layers=(0,), metric='values'), "metric='values'"),
    (dict(preset='llava-2'), "preset='llava-2'"),
    (dict(preset='llava-1.5/32'), r'reduce_layers=\[6, 10, 14, 18, 22\] out of range'),
])
def test_bad_settings_are_named(kwargs, match):
    model = make_llava()
    with pytest.raises(ValueError, match=match):
        tp.apply_patch(model, **kwargs)
    assert type(model) is LlavaForConditionalGeneration   # nothing was changed


def test_unsupported_models_are_named():
    with pytest.raises(ValueError, match='got LlamaConfig|got LlamaForCausalLM'):
        tp.apply_patch(transformers.LlamaForCausalLM(LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=32)), reduce_layers=(0,))
    model = make_llava(attn='eager')
    encoder_of(model).layers[0].self_attn.__class__ = type('OtherAttention', (SDPA_ATTENTION,), {})
    with pytest.raises(ValueError, match='layer 0 is CLIPEncoderLayer with OtherAttention'):
        tp.apply_patch(model, reduce_layers=(0,))
    model = make_llava()
    tp.apply_patch(model, reduce_layers=(0,))
    with pytest.raises(ValueError, match='already patched'):
        tp.apply_patch(model, reduce_layers=(0,))


def test_unreduced_layers_keep_hf_sdpa_with_the_size_bias(sdpa_calls):
    torch.manual_seed(0)
    model = CLIPVisionModel(vision_config()).eval()
    tp.apply_patch(model, method='tome', keep_ratio=0.5, reduce_layers=(1,))
    with torch.no_grad():
        model(pixels(1))
    assert sdpa_calls == [False, False, True, True]   # log s from the layer after the reduction


def test_llava_tokens_tool_reads_a_local_config(tmp_path, capsys):
    from mmtt.tools import llava_tokens
    make_llava().config.save_pretrained(tmp_path)
    out = llava_tokens.main(['--config', str(tmp_path), '--keep-ratio', '0.5', '--reduce-layers',
                             '0', '2', '--text-tokens', '10', '--images', '2'])
    assert out['schedule'] == [16, 8, 4] and out['visual_tokens'] == (16, 4)
    assert out['llm_input'] == (10 + 32, 10 + 8)
    full, patched = out['vision_gflops']
    assert 0 < patched < full
    assert 'LLM input length (10 text tokens + 2 image(s)): 42 -> 18' in capsys.readouterr().out
    timed = llava_tokens.main(['--config', str(tmp_path), '--keep-ratio', '0.5', '--reduce-layers',
                               '0', '2', '--text-tokens', '5', '--benchmark', '--rounds', '2',
                               '--lm-layers', '1'])
    assert timed['llm_input'] == (5 + 16, 5 + 4)
    assert set(timed['ratio']) == {'vision', 'prefill', 'ttft', 'ttft_7b_estimate'}
    assert all(len(r) == 2 and min(r) > 0 for r in timed['round_ratios'].values())
    with pytest.raises(SystemExit, match=r'reduce_layers=\[3\] come after the feature layer'):
        llava_tokens.main(['--config', str(tmp_path), '--reduce-layers', '3', '--no-flops'])
    with pytest.raises(SystemExit, match='not a directory'):
        llava_tokens.main(['--config', str(tmp_path / 'missing')])
