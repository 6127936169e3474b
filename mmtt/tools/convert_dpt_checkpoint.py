"""Convert an official DPT-Hybrid checkpoint (isl-org/DPT) for mmtt's DPT configs.

    python tools/convert_dpt_checkpoint.py dpt_hybrid_nyu-2ce69ec7.pt dpt_hybrid_nyu_mmtt.pth
    python tools/test.py configs/dpt/dpt_tt_nyu.py dpt_hybrid_nyu_mmtt.pth

The official NYUv2 weights, ``dpt_hybrid_nyu-2ce69ec7.pt``, are linked from the README of
https://github.com/isl-org/DPT (release assets). The output is an MMEngine checkpoint
(``{'state_dict': ..., 'meta': ...}``) whose keys load strictly into
``configs/dpt/dpt_nyu.py`` / ``configs/dpt/dpt_tt_nyu.py`` (same weights: Token Transforming has no
parameters). The key mapping, and the few keys dropped because DPT never uses them, are tabled
in :mod:`mmtt.models.dpt.convert`:

    pretrained.model.patch_embed.backbone.*   -> backbone.patch_embed.resnet.*
    pretrained.model.patch_embed.proj.*       -> backbone.patch_embed.proj.*
    pretrained.model.blocks.i.*               -> backbone.layers.i.*  (mmcv names: ln1, attn...)
    pretrained.act_postprocess{3,4}.*         -> decode_head.reassemble_blocks.*
    scratch.layer{k}_rn / refinenet{k}        -> decode_head.convs.{k-1} / fusion_blocks.{4-k}
    scratch.output_conv.*                     -> decode_head.depth_head.*
    pretrained.model.norm / head, scratch.refinenet4.resConfUnit1 -> dropped (unused by DPT)

The file is read with ``torch.load(weights_only=True)``: the official file is a plain state dict.
"""
import argparse
import os.path as osp
from typing import Dict

import torch
from torch import Tensor

from mmtt.models.dpt.convert import convert_dpt_state_dict
from mmtt.tools._cli import ToolError, exits_on_user_error, one_line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official DPT checkpoint, e.g. dpt_hybrid_nyu-2ce69ec7.pt')
    parser.add_argument('dst', help='output MMEngine checkpoint (.pth)')
    return parser.parse_args(argv)


def load_official(src: str) -> Dict[str, Tensor]:
    """The official file's tensors; a file that is not one is a ToolError saying what it is."""
    if not osp.isfile(src):
        raise ToolError(f'{src}: no such file')
    try:
        official = torch.load(src, map_location='cpu', weights_only=True)
    except Exception as err:   # torch raises several types for files it cannot read as weights
        text = one_line(err)
        if 'HistoryBuffer' in text or 'mmengine' in text:
            raise ToolError(f'{src} is an MMEngine checkpoint (already converted?), not an official '
                            'DPT state dict') from None
        raise ToolError(f'{src} is not a PyTorch checkpoint holding only tensors ({text[:200]})') from None
    if not isinstance(official, dict) or not all(isinstance(k, str) for k in official):
        raise ToolError(f'{src} holds a {type(official).__name__}, not a state dict (name -> tensor)')
    if 'state_dict' in official and 'model' not in official:
        raise ToolError(f'{src} is an MMEngine checkpoint (already converted?), not an official DPT state dict')
    return official


@exits_on_user_error
def main(argv=None) -> None:
    args = parse_args(argv)
    official = load_official(args.src)
    state_dict = convert_dpt_state_dict(official)
    dropped = len(official.get('model', official)) - len(state_dict)
    torch.save(dict(state_dict=state_dict,
                    meta=dict(converted_from=osp.basename(args.src), source='isl-org/DPT')),
               args.dst)
    print(f'{args.src}: {len(state_dict)} tensors written to {args.dst} '
          f'({dropped} unused by DPT dropped)')


if __name__ == '__main__':
    main()
