"""Running an mmdet detector without a data pipeline: for FLOP counting and benchmarks.

mmseg models run as ``model(inputs, mode='tensor')``; DETR-style detectors (DINO) also need
data samples whose metainfo gives the image and batch shapes, from which they build their
padding masks. :func:`det_data_samples` makes those for unpadded inputs, and
:class:`DetTensorForward` wraps a detector as a one-argument module for the jit tracer.
"""
from typing import List, Optional, Tuple

from torch import Tensor, nn

__all__ = ['is_detector', 'det_data_samples', 'DetTensorForward', 'detection_test_shape',
           'tensor_forward']


def is_detector(model: nn.Module) -> bool:
    """True for an mmdet detector (anything deriving from mmdet's ``BaseDetector``)."""
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:   # mmdet not installed: cannot be a detector
        return False
    return isinstance(model, BaseDetector)


def det_data_samples(batch: int, shape: Tuple[int, int]) -> List:
    """``batch`` ``DetDataSample`` s for ``[batch, 3, H, W]`` inputs that fill the batch.

    ``img_shape = ori_shape = pad_shape = batch_input_shape = (H, W)`` and
    ``scale_factor = (1, 1)``: what ``DetDataPreprocessor`` records for one unpadded image.
    """
    from mmdet.structures import DetDataSample
    h, w = (int(v) for v in shape)
    samples = []
    for _ in range(batch):
        sample = DetDataSample()
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                 batch_input_shape=(h, w), scale_factor=(1.0, 1.0)))
        samples.append(sample)
    return samples


class DetTensorForward(nn.Module):
    """``detector(inputs, data_samples, mode='tensor')`` as a one-argument module.

    The data samples are made per call from the input's shape, so one wrapper serves any
    batch size and input size (FLOP counting, latency and throughput runs).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor):
        samples = det_data_samples(int(inputs.shape[0]), tuple(int(v) for v in inputs.shape[-2:]))
        return self.model(inputs, samples, mode='tensor')


def detection_test_shape(cfg) -> Optional[Tuple[int, int]]:
    """``(H, W)`` that an mmdet config's test ``Resize`` gives a landscape image, e.g.
    (800, 1333) for COCO's ``scale=(1333, 800)``; None for other configs (mmseg ones keep
    their crop size) or without such a step."""
    if cfg.get('default_scope') != 'mmdet':
        return None
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline', [])
    for step in pipeline:
        if step.get('type') == 'Resize' and step.get('scale') is not None:
            return int(min(step['scale'])), int(max(step['scale']))
    return None


def tensor_forward(model: nn.Module) -> nn.Module:
    """A one-argument ``inputs -> model outputs`` module for any mmseg or mmdet model."""
    if is_detector(model):
        return DetTensorForward(model)
    from .get_flops import TensorForward
    return TensorForward(model)

