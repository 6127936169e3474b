"""Named presets: what each sets, that explicit options win, and that every entry point agrees."""
import pytest
import timm
import torch
from mmengine.registry import MODELS

from mmtt.hosts import timm as tt
from mmtt.modules import TokenTransform
from mmtt.modules.presets import PRESET_KEYS, PRESETS

PAPER = dict(method='transform', kappa=0.55, tau=150.0, selection='informative', similarity='cosine',
             orphans='spread', top_k=None, score_stride=1, anchor=False, distinct_stride=1)
FAST = dict(method='transform', kappa=0.3, tau=150.0, selection='mixed', similarity='cosine',
            orphans='spread', top_k=2, score_stride=8, anchor=True, distinct_stride=4)


def settings(module: TokenTransform) -> dict:
    return {key: getattr(module, key) for key in PRESET_KEYS}


def test_presets_are_the_documented_settings():
    assert dict(PRESETS['paper'].transform) == PAPER and PRESETS['paper'].recovery == 'nearest'
    assert dict(PRESETS['fast'].transform) == FAST and PRESETS['fast'].recovery == 'share'
    assert PRESETS['paper'].windows and not PRESETS['fast'].windows


def test_no_preset_is_the_paper_for_any_method():
    assert settings(TokenTransform()) == PAPER == settings(TokenTransform(preset='paper'))
    assert settings(TokenTransform(method='tome')) == dict(PAPER, method='tome')


def test_preset_fills_what_is_left_out_and_explicit_options_win():
    assert settings(TokenTransform(preset='fast')) == FAST
    assert settings(TokenTransform(preset='fast', kappa=0.4, top_k=3)) == dict(FAST, kappa=0.4, top_k=3)
    built = MODELS.build(dict(type='TokenTransform', preset='fast', keep_ratio=0.5))
    assert settings(built) == FAST and built.keep_ratio == 0.5 and built.preset == 'fast'


@pytest.mark.parametrize('kwargs,needle', [
    (dict(preset='quick'), "unknown preset='quick'; choose one of 'paper', 'fast'"),
    (dict(preset=3), 'preset=3 must be a name'),
    (dict(preset='fast', method='tome'), "preset='fast' is a Token Transforming setting; it cannot be "
                                         "combined with method='tome'"),
    (dict(preset='paper', method='prune'), "preset='paper' is a Token Transforming setting"),
    (dict(score_stride='8'), "score_stride='8' must be an int >= 1"),
])
def test_bad_presets_are_named(kwargs, needle):
    with pytest.raises(ValueError) as info:
        TokenTransform(**kwargs)
    assert needle in str(info.value)


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, depth=4,
                             img_size=96).eval()


def test_apply_patch_preset_equals_the_spelled_out_setting():
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    by_name, spelled = tiny_vit(), tiny_vit()
    tt.apply_patch(by_name, preset='fast', keep_ratio=0.6, reduce_layers=(0, 2), recover=True)
    tt.apply_patch(spelled, keep_ratio=0.6, reduce_layers=(0, 2), recover='share', **FAST)
    assert settings(by_name.blocks[0].token_transform) == FAST
    assert by_name.token_recovery.mode == 'share'
    with torch.no_grad():
        assert torch.equal(by_name.forward_features(x), spelled.forward_features(x))
        reduced = by_name(x)
        tt.remove_patch(by_name)
        assert not torch.equal(reduced, by_name(x))


def test_a_schedule_name_given_as_preset_is_still_the_schedule():
    by_preset, by_schedule = tiny_vit(), tiny_vit()
    twelve = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, img_size=96)
    tt.apply_patch(twelve, preset='deit-s/0.7')
    assert [i for i, b in enumerate(twelve.blocks) if b.token_transform is not None] == [3, 6, 9]
    assert twelve.blocks[3].token_transform.keep_ratio == 0.7
    with pytest.raises(ValueError, match="unknown schedule='fast'"):
        tt.apply_patch(by_schedule, schedule='fast')
    with pytest.raises(ValueError, match="unknown preset='deit-s/0.5'"):
        tt.apply_patch(by_preset, preset='deit-s/0.5')
