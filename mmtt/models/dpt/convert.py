"""Official DPT checkpoints (isl-org/DPT) -> this package's ``DepthEstimator`` state dict.

The official ``dpt_hybrid_nyu-2ce69ec7.pt`` holds the state dict of DPT's ``DPTDepthModel``:
timm's ``vit_base_resnet50_384`` under ``pretrained.model`` (``M.`` below), DPT's reassemble
under ``pretrained.act_postprocess*`` (``P.``), the decoder under ``scratch`` (``S.``). On our
side ``B.`` is ``backbone`` (:class:`TokenHybridVisionTransformer`) and ``H.`` is
``decode_head`` (:class:`DPTDepthHead`); ``i`` is a ViT block, ``k`` a refinenet (4 is the
coarsest), ``u`` a residual unit, ``c`` one of its convs.

=========================================  ==================================================
official                                   mmtt
=========================================  ==================================================
M.cls_token, M.pos_embed                   B.cls_token, B.pos_embed
M.patch_embed.backbone.*                   B.patch_embed.resnet.* (timm ``ResNetV2`` names)
M.patch_embed.proj.*                       B.patch_embed.proj.*
M.blocks.i.norm1.* / norm2.*               B.layers.i.ln1.* / ln2.*
M.blocks.i.attn.qkv.weight / bias          B.layers.i.attn.attn.in_proj_weight / in_proj_bias
M.blocks.i.attn.proj.*                     B.layers.i.attn.attn.out_proj.*
M.blocks.i.mlp.fc1.* / fc2.*               B.layers.i.ffn.layers.0.0.* / ffn.layers.1.*
P.act_postprocess{3,4}.0.project.0.*       H.reassemble_blocks.readout_projects.{2,3}.0.*
P.act_postprocess{3,4}.3.*                 H.reassemble_blocks.projects.{2,3}.conv.*
P.act_postprocess4.4.*                     H.reassemble_blocks.resize_layers.3.*
S.layer{1..4}_rn.weight                    H.convs.{0..3}.weight
S.refinenet{k}.resConfUnit{u}.conv{c}.*    H.fusion_blocks.{4-k}.res_conv_unit{u}.conv{c}.*
S.refinenet{k}.out_conv.*                  H.fusion_blocks.{4-k}.project.conv.*
S.output_conv.{0,2,4}.*                    H.depth_head.{0,2,4}.*
M.norm.*, M.head.*                         dropped: DPT taps block outputs before the final
                                           norm, and never runs the ImageNet classifier
S.refinenet4.resConfUnit1.*                dropped: the coarsest fusion has no skip input,
                                           DPT never calls it
=========================================  ==================================================

The hybrid's ``act_postprocess1/2`` are identities (no keys). Any other key is an error: the
converter maps every key or names the one it cannot.
"""
import re
from typing import Callable, Dict, List, Tuple

from torch import Tensor

_DROPPED = (
    re.compile(r'pretrained\.model\.(norm|head|pre_logits)\.'),
    re.compile(r'scratch\.refinenet4\.resConfUnit1\.'),
)

# (pattern, replacement) over the official key; the first match wins.
_RULES: List[Tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r'pretrained\.model\.(cls_token|pos_embed)$'),
     lambda m: f'backbone.{m[1]}'),
    (re.compile(r'pretrained\.model\.patch_embed\.backbone\.(.+)$'),
     lambda m: f'backbone.patch_embed.resnet.{m[1]}'),
    (re.compile(r'pretrained\.model\.patch_embed\.proj\.(weight|bias)$'),
     lambda m: f'backbone.patch_embed.proj.{m[1]}'),
    (re.compile(r'pretrained\.model\.blocks\.(\d+)\.norm([12])\.(weight|bias)$'),
     lambda m: f'backbone.layers.{m[1]}.ln{m[2]}.{m[3]}'),
    (re.compile(r'pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$'),
     lambda m: f'backbone.layers.{m[1]}.attn.attn.in_proj_{m[2]}'),
    (re.compile(r'pretrained\.model\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$'),
     lambda m: f'backbone.layers.{m[1]}.attn.attn.out_proj.{m[2]}'),
    (re.compile(r'pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$'),
     lambda m: f'backbone.layers.{m[1]}.ffn.layers.0.0.{m[2]}'),
    (re.compile(r'pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$'),
     lambda m: f'backbone.layers.{m[1]}.ffn.layers.1.{m[2]}'),
    (re.compile(r'pretrained\.act_postprocess([1-4])\.0\.project\.0\.(weight|bias)$'),
     lambda m: f'decode_head.reassemble_blocks.readout_projects.{int(m[1]) - 1}.0.{m[2]}'),
    (re.compile(r'pretrained\.act_postprocess([1-4])\.3\.(weight|bias)$'),
     lambda m: f'decode_head.reassemble_blocks.projects.{int(m[1]) - 1}.conv.{m[2]}'),
    (re.compile(r'pretrained\.act_postprocess([1-4])\.4\.(weight|bias)$'),
     lambda m: f'decode_head.reassemble_blocks.resize_layers.{int(m[1]) - 1}.{m[2]}'),
    (re.compile(r'scratch\.layer([1-4])_rn\.weight$'),
     lambda m: f'decode_head.convs.{int(m[1]) - 1}.weight'),
    (re.compile(r'scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(weight|bias)$'),
     lambda m: f'decode_head.fusion_blocks.{4 - int(m[1])}.res_conv_unit{m[2]}.conv{m[3]}.{m[4]}'),
    (re.compile(r'scratch\.refinenet([1-4])\.out_conv\.(weight|bias)$'),
     lambda m: f'decode_head.fusion_blocks.{4 - int(m[1])}.project.conv.{m[2]}'),
    (re.compile(r'scratch\.output_conv\.([024])\.(weight|bias)$'),
     lambda m: f'decode_head.depth_head.{m[1]}.{m[2]}'),
]


def convert_dpt_key(key: str) -> str:
    """The mmtt name of one official key; '' for a key that is dropped (see the table)."""
    if any(p.match(key) for p in _DROPPED):
        return ''
    for pattern, rename in _RULES:
        m = pattern.match(key)
        if m:
            return rename(m)
    raise ValueError(f'unknown DPT checkpoint key {key!r}: not in the DPT-Hybrid layout this '
                     'converter maps (see mmtt.models.dpt.convert)')


def convert_dpt_state_dict(official: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename an official DPT-Hybrid state dict (values untouched, dropped keys left out).

    Accepts the plain state dict or DPT's training checkpoint ``{'model': ..., 'optimizer': ...}``.
    """
    if 'model' in official and 'optimizer' in official:
        official = official['model']
    out = {}
    for key, value in official.items():
        new = convert_dpt_key(key[len('module.'):] if key.startswith('module.') else key)
        if new:
            out[new] = value
    return out
