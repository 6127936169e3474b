"""Any mmseg or mmdet model as a one-argument ``inputs -> outputs`` module, for the jit tracer.

mmseg models run as ``model(inputs, mode='tensor')``; DETR-style detectors (DINO) also need
data samples whose metainfo gives the image and batch shapes, from which they build their
padding masks. :class:`TensorForward` makes those per call for unpadded inputs, so one wrapper
serves any model, batch size and input size (FLOP counting, latency and throughput runs).
"""
from typing import List, Tuple

from torch import Tensor, nn

__all__ = ['is_detector', 'det_data_samples', 'TensorForward', 'DetTensorForward', 'tensor_forward']


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


class TensorForward(nn.Module):
    """``model(inputs, mode='tensor')`` as a one-argument module; for an mmdet detector
    ``model(inputs, data_samples, mode='tensor')``, the samples made per call from the input's
    shape (:func:`det_data_samples`).

    Args:
        model: an mmseg segmentor / depth estimator or an mmdet detector.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.detector = is_detector(model)

    def forward(self, inputs: Tensor):
        """inputs: ``[B, 3, H, W]``."""
        if not self.detector:
            return self.model(inputs, mode='tensor')
        samples = det_data_samples(int(inputs.shape[0]), tuple(int(v) for v in inputs.shape[-2:]))
        return self.model(inputs, samples, mode='tensor')


# The detector wrapper's former name: one class now serves segmentors and detectors alike.
DetTensorForward = TensorForward


def tensor_forward(model: nn.Module) -> nn.Module:
    """A one-argument ``inputs -> model outputs`` module for any mmseg or mmdet model."""
    return TensorForward(model)
