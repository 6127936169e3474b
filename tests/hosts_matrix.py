"""The hosts mmtt reduces tokens in, one row each, for the conformance suite (and the compile tests).

A row says how to build a tiny model of the host with a given reduction (the host's own weights,
loaded strictly), how to build the unmodified host model, how to run a forward on a fixed input,
which block comes after the reductions (its input token count shows whether tokens were
reduced), how to turn activation checkpointing on, and how to switch the reduction off again.
Adding a host is one row in :data:`HOSTS`.

Every tiny model has 4 blocks after its embedding (Swin: 2 per stage), 16 reducible tokens in a
4 x 4 grid (Swin: a 14 x 14 map in 7 x 7 windows) and reduces after blocks 1 and 2, so block 3
sees the reduced tokens.
"""
import copy
from functools import lru_cache
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import timm
import torch
from mmengine.registry import init_default_scope
from tiny_cls import TINY
from tiny_coco import TINY_SWIN
from tiny_nyu import TINY_BACKBONE
from tiny_seg import TINY_VIT
from torch import Tensor, nn

import mmtt  # noqa: F401  (registers the backbones)
from mmtt.modules import METHODS
from mmtt.modules.methods import WINDOW_METHODS

REDUCE_LAYERS = (1, 2)
KEEP_RATIO = 0.6   # 16 -> 10 -> 6 tokens (Hourglass: 4 x 4 -> 3 x 3 -> 2 x 2 centres)


class Spec(NamedTuple):
    """A reduction: ``method``, ``keep_ratio`` (None: the host's default, which Swin derives from
    its reduced window), ``reduce_layers`` and further ``TokenTransform`` options."""
    method: str = 'transform'
    keep_ratio: Optional[float] = KEEP_RATIO
    reduce_layers: Tuple[int, ...] = REDUCE_LAYERS
    options: Tuple[Tuple[str, object], ...] = ()

    def transform_cfg(self) -> dict:
        cfg = dict(type='TokenTransform', method=self.method, **dict(self.options))
        if self.keep_ratio is not None:
            cfg['keep_ratio'] = self.keep_ratio
        return cfg

    def patch_kwargs(self) -> dict:
        kwargs = dict(method=self.method, reduce_layers=self.reduce_layers, **dict(self.options))
        if self.keep_ratio is not None:
            kwargs['keep_ratio'] = self.keep_ratio
        return kwargs


def spec(method: str = 'transform', **changes) -> Spec:
    """A :class:`Spec`; keys other than its fields are ``TokenTransform`` options."""
    fields = {k: changes.pop(k) for k in list(changes) if k in Spec._fields}
    return Spec(method, **fields, options=tuple(sorted(changes.items())))


class Host(NamedTuple):
    """One host.

    Attributes:
        name: test id.
        plain: the unmodified host model (fixed seed), eval mode.
        build: ``build(spec, checkpoint)``: the host with the reduction ``spec`` (None: mmtt's
            model with no reduction) and the plain model's weights, eval mode; ``checkpoint``
            turns activation checkpointing on.
        run: the forward under test, its outputs as a tuple of tensors.
        image: ``image(batch, seed)``, a fixed input.
        late: the block after the last reduction, of a plain or a reduced model.
        keep_one: the :class:`Spec` changes that make a reduction a no-op.
        remove: ``remove_patch`` for a host patched in place; None for one built from a config
            (its reduction is switched off by a fresh build with ``reduce_layers=()``).
        refused: method -> the key a refusal of it names (by design: Swin reduces in windows).
        checkpointing: why the host has no activation checkpointing, or None when it has.
        train_for_checkpointing: the host checkpoints only in training mode.
    """
    name: str
    plain: Callable[[], nn.Module]
    build: Callable[[Optional[Spec], bool], nn.Module]
    run: Callable[[nn.Module, Tensor], Tuple[Tensor, ...]]
    image: Callable[[int, int], Tensor]
    late: Callable[[nn.Module], nn.Module]
    keep_one: Mapping[str, object] = dict(keep_ratio=1.0)
    remove: Optional[Callable[[nn.Module], nn.Module]] = None
    refused: Mapping[str, str] = {}
    checkpointing: Optional[str] = None


def images(size: int) -> Callable[[int, int], Tensor]:
    def image(batch: int, seed: int = 0) -> Tensor:
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return image


def recovery_cfg(s: Spec) -> dict:
    # Hourglass' clustered tokens go back through their soft assignment, as its configs do.
    return dict(type='TokenRecovery', mode='reconstruct' if s.method == 'hourglass' else 'nearest')


def loaded(model: nn.Module, plain: nn.Module) -> nn.Module:
    model.load_state_dict(plain.state_dict(), strict=True)
    model.eval()   # mmseg's and mmdet's train() return None: no chaining
    return model


# ---- hosts patched in place: timm, tlt (LV-ViT), Hugging Face CLIP ----

@lru_cache(maxsize=None)
def _timm() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, depth=4,
                             img_size=64, embed_dim=32, num_heads=2).eval()


def _timm_build(s: Optional[Spec], checkpoint: bool = False) -> nn.Module:
    from mmtt.hosts import timm as tt
    model = tt.apply_patch(copy.deepcopy(_timm()), **(s or spec(reduce_layers=())).patch_kwargs())
    model.set_grad_checkpointing(checkpoint)
    return model


def _timm_remove(model: nn.Module) -> nn.Module:
    from mmtt.hosts import timm as tt
    return tt.remove_patch(model)


@lru_cache(maxsize=None)
def _lvvit() -> nn.Module:
    from mmtt.hosts import lvvit
    torch.manual_seed(0)
    return lvvit.LV_ViT(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, mlp_ratio=3.,
                        p_emb='4_2', skip_lam=2., return_dense=True, mix_token=True,
                        num_classes=10).eval()


def _lvvit_build(s: Optional[Spec], checkpoint: bool = False) -> nn.Module:
    from mmtt.hosts import lvvit
    assert not checkpoint
    return lvvit.apply_patch(copy.deepcopy(_lvvit()), **(s or spec(reduce_layers=())).patch_kwargs())


def _lvvit_remove(model: nn.Module) -> nn.Module:
    from mmtt.hosts import lvvit
    return lvvit.remove_patch(model)


@lru_cache(maxsize=None)
def _clip() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, image_size=28, patch_size=7)
    config._attn_implementation = 'sdpa'
    torch.manual_seed(0)
    return CLIPVisionModel(config).eval()


def _clip_build(s: Optional[Spec], checkpoint: bool = False) -> nn.Module:
    from mmtt.hosts import transformers as tp
    model = tp.apply_patch(copy.deepcopy(_clip()), **(s or spec(reduce_layers=())).patch_kwargs())
    if checkpoint:
        model.gradient_checkpointing_enable()
    return model


def _clip_remove(model: nn.Module) -> nn.Module:
    from mmtt.hosts import transformers as tp
    return tp.remove_patch(model)


def _clip_run(model: nn.Module, x: Tensor) -> Tuple[Tensor, ...]:
    out = model(pixel_values=x)
    return out.last_hidden_state, out.pooler_output


# ---- hosts built from a config: mmseg ViT (Segmenter), DPT-Hybrid, mmdet Swin, mmpretrain, PS-ViT ----

def _registry(scope: str):
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    elif scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def config_host(scope: str, plain_cfg: dict, token_type: str, needs_recovery: bool,
                extra: Optional[Callable[[Spec], dict]] = None):
    """``(plain, build)`` of a registry-built backbone: ``plain_cfg`` is the unmodified host,
    ``token_type`` mmtt's class with the same arguments and the reduction keys."""
    @lru_cache(maxsize=None)
    def plain() -> nn.Module:
        torch.manual_seed(0)
        model = _registry(scope).build(plain_cfg)
        model.eval()
        return model

    def build(s: Optional[Spec], checkpoint: bool = False) -> nn.Module:
        cfg = dict(plain_cfg, type=token_type)
        if s is not None:
            cfg.update(token_transform=s.transform_cfg(), reduce_layers=s.reduce_layers)
            if needs_recovery:
                cfg['token_recovery'] = recovery_cfg(s)
            cfg.update(extra(s) if extra else {})
        if checkpoint:
            cfg['with_cp'] = True
        return loaded(_registry(scope).build(cfg), plain())
    return plain, build


def _tuple(model: nn.Module, x: Tensor) -> Tuple[Tensor, ...]:
    out = model(x)
    flat = []
    for o in (out if isinstance(out, (tuple, list)) else (out,)):
        flat.extend(o if isinstance(o, (tuple, list)) else (o,))
    return tuple(flat)


_seg_plain, _seg_build = config_host(
    'mmseg', dict(TINY_VIT, type='VisionTransformer', out_indices=(0, 3)), 'TokenVisionTransformer',
    needs_recovery=True)

# DPT-Hybrid has no unmodified class in mmseg: the host is mmtt's backbone with no reduction keys.
_dpt_plain, _dpt_build = config_host(
    'mmseg', dict(TINY_BACKBONE, type='TokenHybridVisionTransformer'), 'TokenHybridVisionTransformer',
    needs_recovery=True)

# Swin derives keep_ratio from the reduced window (7 x 7 -> 5 x 5) unless one is given.
_swin_plain, _swin_build = config_host(
    'mmdet', dict(TINY_SWIN, type='SwinTransformer'), 'TokenSwinTransformer', needs_recovery=True,
    extra=lambda s: dict(reduced_window_size=5))

_PRETRAIN_ARCH = dict(arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64),
                      img_size=32, patch_size=8, init_cfg=None, out_type='raw', out_indices=(0, 3))
_vit_plain, _vit_build = config_host(
    'mmpretrain', dict(_PRETRAIN_ARCH, type='VisionTransformer'), 'TokenVisionTransformer',
    needs_recovery=False)
_deit_plain, _deit_build = config_host(
    'mmpretrain', dict(_PRETRAIN_ARCH, type='DistilledVisionTransformer'),
    'TokenDistilledVisionTransformer', needs_recovery=False)
_t2t_plain, _t2t_build = config_host(
    'mmpretrain', dict(TINY['t2t'], type='T2T_ViT', out_type='raw', out_indices=(0, 3)), 'TokenT2T_ViT',
    needs_recovery=False)


@lru_cache(maxsize=None)
def _psvit() -> nn.Module:
    from mmtt.models.psvit import PSViT
    torch.manual_seed(0)
    model = PSViT(num_classes=10, out_type='raw', **TINY['psvit'])
    for layer in model.ps_layers:   # non-zero offsets, so the sampling moves
        if layer.offset_layer is not None:
            nn.init.normal_(layer.offset_layer.weight, std=0.5)
    return model.eval()


def _psvit_build(s: Optional[Spec], checkpoint: bool = False) -> nn.Module:
    from mmtt.models.psvit import PSViT
    assert not checkpoint
    keys = {} if s is None else dict(token_transform=s.transform_cfg(), reduce_layers=s.reduce_layers)
    return loaded(PSViT(num_classes=10, out_type='raw', **TINY['psvit'], **keys), _psvit())


def _attr_path(path: str) -> Callable[[nn.Module], nn.Module]:
    def get(model: nn.Module) -> nn.Module:
        for part in path.split('.'):
            model = model[int(part)] if part.isdigit() else getattr(model, part)
        return model
    return get


NO_CP_MMPRETRAIN = "mmpretrain's ViT-family encoder layers have no activation checkpointing"

HOSTS: Tuple[Host, ...] = (
    Host('timm', _timm, _timm_build, lambda m, x: (m(x), m.forward_features(x)), images(64),
         _attr_path('blocks.3'), remove=_timm_remove),
    Host('lvvit', _lvvit, _lvvit_build, lambda m, x: (m(x), m.forward_features(x)), images(64),
         _attr_path('blocks.3'), remove=_lvvit_remove,
         checkpointing="tlt's LV-ViT has no activation checkpointing"),
    Host('clip', _clip, _clip_build, _clip_run, images(28),
         _attr_path('vision_model.encoder.layers.3'), remove=_clip_remove),
    Host('mmseg_vit', _seg_plain, _seg_build, _tuple, images(64), _attr_path('layers.3')),
    Host('dpt', _dpt_plain, _dpt_build, _tuple, images(64), _attr_path('layers.3')),
    Host('mmdet_swin', _swin_plain, _swin_build, _tuple, images(56), _attr_path('stages.1.blocks.1'),
         keep_one=dict(reduce_layers=()),   # a keep ratio of 1 is no reduced window
         refused={m: 'token_transform.method' for m in METHODS if m not in WINDOW_METHODS}),
    Host('mmpretrain_vit', _vit_plain, _vit_build, _tuple, images(32), _attr_path('layers.3'),
         checkpointing=NO_CP_MMPRETRAIN),
    Host('mmpretrain_deit', _deit_plain, _deit_build, _tuple, images(32), _attr_path('layers.3'),
         checkpointing=NO_CP_MMPRETRAIN),
    Host('mmpretrain_t2t', _t2t_plain, _t2t_build, _tuple, images(64), _attr_path('encoder.3'),
         checkpointing=NO_CP_MMPRETRAIN),
    Host('psvit', _psvit, _psvit_build, _tuple, images(32), _attr_path('trans_layers.3'),
         checkpointing="mmtt's PS-ViT has no activation checkpointing"),
)
HOST_BY_NAME: Dict[str, Host] = {h.name: h for h in HOSTS}


def default_spec(host: Host, method: str, **changes) -> Spec:
    """The reduction the suite runs on ``host``: ``method`` at :data:`KEEP_RATIO` after blocks 1
    and 2 (Swin: its derived ratio)."""
    if host.name == 'mmdet_swin':
        changes.setdefault('keep_ratio', None)
    return spec(method, **changes)


def run(host: Host, model: nn.Module, x: Tensor) -> Tuple[Tensor, ...]:
    with torch.no_grad():
        return tuple(host.run(model, x))


def tokens_entering(host: Host, model: nn.Module, x: Tensor) -> int:
    """Tokens of the first input of :attr:`Host.late` during one forward of ``model``."""
    seen = []
    handle = host.late(model).register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        run(host, model, x)
    finally:
        handle.remove()
    assert len(set(seen)) == 1, seen   # the same count in each of the row's forwards
    return seen[0]


def equal(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
