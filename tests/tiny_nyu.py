"""Tiny DPT-Hybrid depth models, a tiny NYU-format data set, checkpoints and an official-layout
DPT reference, for the DPT tests."""
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
METRICS = ('d1', 'd2', 'd3', 'abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10', 'silog')

# ResNet 16 -> (32, 64, 128) with one block per stage, ViT 32 wide, 4 layers; taps at ViT 1, 3.
TINY_BACKBONE = dict(img_size=64, embed_dims=32, num_layers=4, num_heads=2, out_indices=(1, 3),
                     resnet_layers=(1, 1, 1), resnet_channels=(32, 64, 128),
                     resnet_stem_channels=16, resnet_norm_groups=8, drop_path_rate=0.0)
# scale 0.05 (not NYU's 0.000305) so random weights give depth maps that vary visibly.
TINY_HEAD = dict(embed_dims=32, post_process_channels=(32, 64, 32, 32), channels=16,
                 head_channels=8, scale=0.05)


def write_tiny_nyu(root: Path, count: int = 3) -> None:
    """NYU layout (images/test/*.jpg, annotations/test/*.png): 480x640 RGB and 16-bit depth in
    millimetres (mmseg's NYU config rescales by 1e-3), 0 where depth is missing."""
    rng = np.random.default_rng(0)
    (root / 'images/test').mkdir(parents=True)
    (root / 'annotations/test').mkdir(parents=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(count):
        name = f'kitchen_{i:04d}'
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(
            root / f'images/test/{name}.jpg')
        depth = (1000 + 3000 * yy / 480 + 500 * i + 300 * np.sin(xx / 40)).astype(np.uint16)
        depth[:20 * (i + 1), :50] = 0   # missing depth
        Image.fromarray(depth).save(root / f'annotations/test/{name}.png')
    assert np.array(Image.open(root / 'annotations/test/kitchen_0000.png')).dtype == np.uint16


def write_config(tmp: Path, name: str, backbone: dict, base: str = 'configs/dpt/dpt_tt_nyu.py') -> Path:
    """A tiny config over ``base`` reading :func:`write_tiny_nyu`'s set at 64x96."""
    text = f"""
_base_ = ['{REPO / base}']
# mmtt.models named explicitly: the suite does not rely on `import mmtt` importing it.
custom_imports = dict(imports=['mmtt', 'mmtt.models'], allow_failed_imports=False)
model = dict(backbone={dict(TINY_BACKBONE, **backbone)!r}, decode_head={TINY_HEAD!r})
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 64), keep_ratio=False),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='PackSegInputs', meta_keys=('img_path', 'depth_map_path', 'ori_shape', 'img_shape',
                                          'pad_shape', 'scale_factor', 'flip', 'flip_direction'))]
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root='{tmp / "data"}', pipeline=test_pipeline))
val_dataloader = test_dataloader
env_cfg = dict(cudnn_benchmark=False)
"""
    path = tmp / f'{name}.py'
    path.write_text(text)
    return path


def build_tiny(backbone: dict = None, head: dict = None, **kw) -> nn.Module:
    """The tiny ``DepthEstimator`` in eval mode (random weights)."""
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    model = MODELS.build(dict(
        type='DepthEstimator',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3,
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=0),
        backbone=dict(TINY_BACKBONE, type='TokenHybridVisionTransformer', **(backbone or {})),
        decode_head=dict(TINY_HEAD, type='DPTDepthHead', **(head or {})),
        test_cfg=ConfigDict(mode='whole'), **kw))   # mmseg reads test_cfg.mode
    return model.eval()


def save_checkpoint(tmp: Path) -> Path:
    """Random weights of the tiny model, with a positive output bias so that depth varies."""
    torch.manual_seed(0)
    state = build_tiny().state_dict()
    state['decode_head.depth_head.4.bias'].fill_(1.0)
    path = tmp / 'dpt_tiny.pth'
    torch.save(dict(state_dict=state, meta=dict(iter=0)), path)
    return path


def run_tool(args: Sequence[str], tmp: Path, env_extra: dict = None) -> Dict[str, float]:
    """Run a tool; the nine depth metrics of its last ``Iter(test)`` line."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', **(env_extra or {}))
    proc = subprocess.run(list(args), cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = [line for line in out.splitlines() if 'Iter(test)' in line and 'abs_rel' in line]
    assert lines, 'no metrics line printed:\n' + out[-3000:]
    found = dict(re.findall(r'(\w+): (-?[\d.]+(?:e[-+]?\d+)?)', lines[-1]))
    return {k: float(found[k]) for k in METRICS if k in found}


def depth_pngs(folder: Path) -> Dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob('*.png'))}


# --- DPT as isl-org/DPT builds it (DPTDepthModel, backbone 'vitb_rn50_384'), for the
# converter: parameter names and shapes are those of the official checkpoint.

class _ProjectReadout(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * c, c), nn.GELU())

    def forward(self, x):
        return self.project(torch.cat((x[:, 1:], x[:, :1].expand_as(x[:, 1:])), -1))


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class _ResidualConvUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class _FusionBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1 = _ResidualConvUnit(c)
        self.resConfUnit2 = _ResidualConvUnit(c)

    def forward(self, *xs):
        out = xs[0] if len(xs) == 1 else xs[0] + self.resConfUnit1(xs[1])
        out = F.interpolate(self.resConfUnit2(out), scale_factor=2, mode='bilinear',
                            align_corners=True)
        return self.out_conv(out)


class _Interpolate(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)


class OfficialDPTHybrid(nn.Module):
    """DPT-Hybrid depth model in the official module layout; ``forward`` follows DPT's
    ``forward_vit``/``forward_flex`` (bilinear position-embedding resize, hooks on ResNet
    stages 0, 1 and two ViT blocks, no final norm), then ``DPTDepthModel`` with ``invert``."""

    def __init__(self, img_size=384, embed_dim=768, depth=12, num_heads=12, hooks=(8, 11),
                 layers=(3, 4, 9), channels=(256, 512, 1024), stem=64, groups=32,
                 features=256, head_channels=32, scale=0.000305, shift=0.1378) -> None:
        super().__init__()
        from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
        from timm.models.resnetv2 import ResNetV2
        from timm.models.vision_transformer import VisionTransformer
        resnet = ResNetV2(layers=list(layers), channels=tuple(channels), num_classes=0,
                          global_pool='', stem_chs=stem, stem_type='same', preact=False,
                          conv_layer=partial(StdConv2dSame, eps=1e-8),
                          norm_layer=partial(GroupNormAct, num_groups=groups))
        self.pretrained = nn.Module()
        self.pretrained.model = VisionTransformer(
            img_size=img_size, patch_size=1, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, num_classes=1000,
            embed_layer=partial(HybridEmbed, backbone=resnet))
        for i in (1, 2):   # the hybrid's CNN taps: identities
            setattr(self.pretrained, f'act_postprocess{i}', nn.Sequential(*[nn.Identity()] * 3))
        # index 2 is DPT's nn.Unflatten (no parameters), done in forward for any size.
        c = embed_dim
        self.pretrained.act_postprocess3 = nn.Sequential(
            _ProjectReadout(c), _Transpose(), nn.Identity(), nn.Conv2d(c, c, 1))
        self.pretrained.act_postprocess4 = nn.Sequential(
            _ProjectReadout(c), _Transpose(), nn.Identity(), nn.Conv2d(c, c, 1),
            nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.scratch = nn.Module()
        for i, c in enumerate((channels[0], channels[1], embed_dim, embed_dim), 1):
            setattr(self.scratch, f'layer{i}_rn', nn.Conv2d(c, features, 3, padding=1, bias=False))
            setattr(self.scratch, f'refinenet{i}', _FusionBlock(features))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1), _Interpolate(),
            nn.Conv2d(features // 2, head_channels, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(head_channels, 1, 1), nn.ReLU(True), nn.Identity())
        self.hooks, self.scale, self.shift = hooks, scale, shift

    def forward(self, x):
        m, pp, s = self.pretrained.model, self.pretrained, self.scratch
        b, _, h, w = x.shape
        acts = []
        handles = [mod.register_forward_hook(lambda _m, _i, o: acts.append(o))
                   for mod in (m.patch_embed.backbone.stages[0], m.patch_embed.backbone.stages[1],
                               m.blocks[self.hooks[0]], m.blocks[self.hooks[1]])]
        try:
            grid = m.pos_embed[0, 1:]
            old = int(grid.shape[0] ** 0.5)
            grid = F.interpolate(grid.reshape(1, old, old, -1).permute(0, 3, 1, 2),
                                 size=(h // 16, w // 16), mode='bilinear')
            pos = torch.cat([m.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
            t = m.patch_embed.proj(m.patch_embed.backbone(x)).flatten(2).transpose(1, 2)
            t = torch.cat((m.cls_token.expand(b, -1, -1), t), dim=1) + pos
            for blk in m.blocks:
                t = blk(t)
        finally:
            for handle in handles:
                handle.remove()
        l1, l2 = acts[0], acts[1]
        l3, l4 = (post[0:2](a).unflatten(2, (h // 16, w // 16))
                  for post, a in ((pp.act_postprocess3, acts[2]), (pp.act_postprocess4, acts[3])))
        l3, l4 = pp.act_postprocess3[3:](l3), pp.act_postprocess4[3:](l4)
        path = s.refinenet4(s.layer4_rn(l4))
        path = s.refinenet3(path, s.layer3_rn(l3))
        path = s.refinenet2(path, s.layer2_rn(l2))
        path = s.refinenet1(path, s.layer1_rn(l1))
        depth = self.scale * s.output_conv(path).squeeze(1) + self.shift
        depth[depth < 1e-8] = 1e-8
        return 1.0 / depth


def tiny_official() -> OfficialDPTHybrid:
    """:class:`OfficialDPTHybrid` at the sizes of :data:`TINY_BACKBONE` / :data:`TINY_HEAD`."""
    b, h = TINY_BACKBONE, TINY_HEAD
    return OfficialDPTHybrid(img_size=b['img_size'], embed_dim=b['embed_dims'],
                             depth=b['num_layers'], num_heads=b['num_heads'],
                             hooks=b['out_indices'], layers=b['resnet_layers'],
                             channels=b['resnet_channels'], stem=b['resnet_stem_channels'],
                             groups=b['resnet_norm_groups'], features=h['channels'],
                             head_channels=h['head_channels'], scale=h['scale'])
