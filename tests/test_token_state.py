"""Token state flows with each forward: threads, gradient checkpointing, every entry point and
pickling work on a patched model."""
import copy
import io
import pickle
import threading

import pytest
import timm
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS as SEG_MODELS

from mmtt.hosts import timm as tt

PATCH = dict(keep_ratio=0.6, layers=(1, 2))


def timm_vit(**patch):
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, depth=4,
                              img_size=64, dynamic_img_size=True).eval()
    return tt.apply_patch(model, **(patch or PATCH))


def seg_vit(**kw):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    cfg = dict(type='TokenVisionTransformer', img_size=(32, 32), patch_size=4, embed_dims=32,
               num_layers=4, num_heads=2, out_indices=(1, 3), reduce_layers=(1, 2),
               token_transform=dict(type='TokenTransform', keep_ratio=0.6),
               token_recovery=dict(type='TokenRecovery'), **kw)
    model = SEG_MODELS.build(cfg)
    model.eval()   # mmseg's ViT.train returns None
    return model


def images(seed, b, size):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def run_alone(fn, x):
    """``fn(x)`` in a thread of its own (a worker thread's intra-op split can differ from the
    main thread's in the last bit, so the reference is computed where the workers run)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(x)))
    thread.start()
    thread.join()
    return out[0]


def run_concurrently(fn, inputs, rounds=4):
    """``fn`` on every input from its own thread, all started together, ``rounds`` times."""
    results, errors = {}, []
    barrier = threading.Barrier(len(inputs))

    def worker(i):
        try:
            barrier.wait()
            for r in range(rounds):
                results[i, r] = fn(inputs[i])
        except Exception as e:   # noqa: BLE001  (reported below with its type)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f'{type(errors[0]).__name__}: {errors[0]}'
    return results


def test_two_threads_share_one_patched_timm_model():
    model = timm_vit(keep_ratio=0.6, layers=(1, 2), recover=True)
    # Different batch sizes and image sizes: any state shared between the calls breaks shapes.
    inputs = [images(0, 1, 64), images(1, 3, 48)]
    with torch.no_grad():
        both = lambda x: (model(x), model.forward_features(x))   # noqa: E731
        sequential = [run_alone(both, x) for x in inputs]
        results = run_concurrently(both, inputs)
    for (i, _), (logits, feats) in results.items():
        assert torch.equal(logits, sequential[i][0]) and torch.equal(feats, sequential[i][1])


def test_two_threads_share_one_token_vision_transformer():
    model = seg_vit()
    inputs = [images(0, 1, 32), images(1, 2, 24)]
    with torch.no_grad():
        sequential = [run_alone(model, x) for x in inputs]
        results = run_concurrently(model, inputs)
    for (i, _), outs in results.items():
        assert all(torch.equal(a, b) for a, b in zip(outs, sequential[i]))


def grads(model, x):
    model.zero_grad()
    out = model(x)
    loss = sum(o.square().sum() for o in out) if isinstance(out, tuple) else out.square().sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('recover', [False, True])
def test_timm_gradient_checkpointing_gives_the_same_gradients(recover):
    x = images(0, 2, 64)
    plain = grads(timm_vit(keep_ratio=0.6, layers=(1, 2), recover=recover), x)
    model = timm_vit(keep_ratio=0.6, layers=(1, 2), recover=recover)
    model.set_grad_checkpointing(True)
    checkpointed = grads(model, x)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name


def test_mmseg_with_cp_gives_the_same_gradients():
    x = images(0, 2, 32)
    plain = grads(seg_vit(), x)
    model = seg_vit(with_cp=True)
    checkpointed = grads(model, x)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name


def test_forward_intermediates_start_from_clean_state():
    x, other = images(0, 2, 64), images(1, 3, 48)
    fresh = timm_vit(keep_ratio=0.6, layers=(1, 2), recover=True)
    used = timm_vit(keep_ratio=0.6, layers=(1, 2), recover=True)
    with torch.no_grad():
        used(other)                    # an ordinary forward first, at another batch and size
        final, inter = used.forward_intermediates(x)
        ref_final, ref_inter = fresh.forward_intermediates(x)
        assert torch.equal(final, ref_final) and torch.equal(final, used.forward_features(x))
        assert [t.shape for t in inter] == [(2, 192, 4, 4)] * 4   # recovered to the full grid
        assert all(torch.equal(a, b) for a, b in zip(inter, ref_inter))
        layers = used.get_intermediate_layers(x, n=2, reshape=True)
        assert all(torch.equal(a, b) for a, b in zip(layers, inter[2:]))


def test_forward_intermediates_without_recovery_name_the_format():
    model = timm_vit(keep_ratio=0.6, layers=(1, 2))
    x = images(0, 2, 64)
    with torch.no_grad():
        _, inter = model.forward_intermediates(x, output_fmt='NLC')
        assert [t.shape[1] for t in inter] == [16, 10, 6, 6]   # patch tokens after each block
        with pytest.raises(ValueError, match="output_fmt='NCHW' after a reduction"):
            model.forward_intermediates(x)
        # Before the first reduction NCHW still works.
        assert model.forward_intermediates(x, indices=[0], intermediates_only=True)[0].shape == (2, 192, 4, 4)


@pytest.mark.parametrize('recover', [False, True])
def test_patched_timm_model_pickles_and_deep_copies(recover):
    model = timm_vit(keep_ratio=0.6, layers=(1, 2), recover=recover)
    x = images(0, 2, 64)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
              torch.load(buffer, weights_only=False)]
    with torch.no_grad():
        ref = model(x)
        for clone in copies:
            assert type(clone) is type(model)
            assert torch.equal(clone(x), ref)
            tt.remove_patch(clone)
            assert type(clone).__name__ == 'VisionTransformer'


def test_token_vision_transformer_pickles():
    model = seg_vit()
    x = images(0, 1, 32)
    with torch.no_grad():
        ref = model(x)
        clone = pickle.loads(pickle.dumps(model))
        assert all(torch.equal(a, b) for a, b in zip(clone(x), ref))


def test_no_forward_writes_to_the_model():
    """Nothing about a forward is left on any module: attribute dicts are unchanged."""
    model = timm_vit(keep_ratio=0.6, layers=(1, 2), recover=True)
    before = {name: set(vars(m)) for name, m in model.named_modules()}
    with torch.no_grad():
        model(images(0, 2, 64))
        model.forward_intermediates(images(1, 1, 64))
    assert {name: set(vars(m)) for name, m in model.named_modules()} == before
