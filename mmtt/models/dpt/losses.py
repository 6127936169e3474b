"""Depth losses for fine-tuning DPT beside mmseg's ``SiLogLoss`` (Eigen et al., 2014).

Both take ``pred`` and ``target`` depth ``[B, 1, H, W]``; target pixels ``<= eps`` (mmseg pads
and marks missing depth with 0) or NaN are ignored. Registered in mmseg's ``MODELS`` with the
``loss_name`` / ``reduction_override`` interface of mmseg losses.

* :class:`ScaleShiftInvariantLoss`: MiDaS' loss (Ranftl et al., 2020), on which DPT's
  monocular models were trained: per image, the prediction is aligned to the target by the
  least-squares scale and shift, then the mean squared residual is taken (in disparity space
  by default, as MiDaS).
* :class:`GradientMatchingLoss`: multi-scale gradient matching of the log-depth residual
  (MegaDepth, Li & Snavely 2018; MiDaS' regulariser): sharp, well-placed depth edges,
  independent of the global scale.
"""
from typing import Optional, Tuple

import torch
from mmseg.models.losses.utils import weight_reduce_loss
from mmseg.registry import MODELS as SEG_MODELS
from torch import Tensor, nn


def _valid(pred: Tensor, target: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Flattened ``[B, N]`` pred, target and float mask of valid target pixels."""
    if pred.shape != target.shape:
        raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} differ')
    pred, target = pred.flatten(1), target.flatten(1)
    mask = (target > eps) & ~torch.isnan(target)
    target = torch.where(mask, target, torch.ones_like(target))
    return pred, target, mask.to(pred.dtype)


def _reduce(loss: Tensor, weight: Optional[Tensor], reduction: str,
            avg_factor: Optional[int]) -> Tensor:
    return weight_reduce_loss(loss, None if weight is None else weight.float(), reduction,
                              avg_factor)


class _DepthLoss(nn.Module):
    """mmseg loss plumbing: weight, reduction, name."""
    default_name = 'loss_depth'

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0, eps: float = 1e-3,
                 loss_name: Optional[str] = None) -> None:
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"reduction={reduction!r}: use 'none', 'mean' or 'sum'")
        self.reduction = reduction
        self.loss_weight = float(loss_weight)
        self.eps = float(eps)
        self._loss_name = loss_name or self.default_name

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        """``[B]`` losses of ``[B, 1, H, W]`` inputs."""
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = reduction_override or self.reduction
        return self.loss_weight * _reduce(self.per_image(pred, target), weight, reduction,
                                          avg_factor)

    @property
    def loss_name(self) -> str:
        return self._loss_name


@SEG_MODELS.register_module()
class ScaleShiftInvariantLoss(_DepthLoss):
    """Mean squared residual after per-image least-squares scale and shift alignment.

    Args:
        space: 'disparity' (1 / depth, as MiDaS) or 'depth'.
        reduction, loss_weight, eps, loss_name: as mmseg losses; eps is the validity threshold
            of the target (and the floor of the prediction before inverting it).
    """
    default_name = 'loss_ssi'

    def __init__(self, space: str = 'disparity', **kwargs) -> None:
        super().__init__(**kwargs)
        if space not in ('disparity', 'depth'):
            raise ValueError(f"space={space!r}: use 'disparity' or 'depth'")
        self.space = space

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target, mask = _valid(pred, target, self.eps)
        if self.space == 'disparity':
            pred, target = 1.0 / pred.clamp(min=self.eps), 1.0 / target
        # Normal equations of min_{s,t} sum mask * (s * pred + t - target)^2, per image.
        n = mask.sum(1).clamp(min=1)
        a00, a01 = (mask * pred * pred).sum(1), (mask * pred).sum(1)
        b0, b1 = (mask * pred * target).sum(1), (mask * target).sum(1)
        det = a00 * n - a01 * a01
        ok = det.abs() > 1e-12   # a constant prediction has no unique scale: keep s=1, t=0
        safe = torch.where(ok, det, torch.ones_like(det))
        scale = torch.where(ok, (n * b0 - a01 * b1) / safe, torch.ones_like(det))
        shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe, torch.zeros_like(det))
        residual = scale[:, None] * pred + shift[:, None] - target
        return (mask * residual ** 2).sum(1) / n


@SEG_MODELS.register_module()
class GradientMatchingLoss(_DepthLoss):
    """L1 of the spatial gradients of ``log(pred) - log(target)`` at ``num_scales`` scales
    (every 1, 2, 4... pixels), over pixel pairs whose targets are both valid.

    Args:
        num_scales: number of scales (MiDaS: 4).
        reduction, loss_weight, eps, loss_name: as mmseg losses.
    """
    default_name = 'loss_grad'

    def __init__(self, num_scales: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_scales < 1:
            raise ValueError(f'num_scales={num_scales} must be >= 1')
        self.num_scales = int(num_scales)

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} must be '
                             'the same [B, 1, H, W]')
        mask = ((target > self.eps) & ~torch.isnan(target)).to(pred.dtype)
        safe_target = torch.where(mask > 0, target, torch.ones_like(target))
        residual = mask * (torch.log(pred.clamp(min=self.eps)) - torch.log(safe_target))
        total = pred.new_zeros(pred.shape[0])
        for k in range(self.num_scales):
            step = 2 ** k
            r, m = residual[..., ::step, ::step], mask[..., ::step, ::step]
            gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * m[..., :, 1:] * m[..., :, :-1]
            gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * m[..., 1:, :] * m[..., :-1, :]
            count = (m[..., :, 1:] * m[..., :, :-1]).flatten(1).sum(1) + \
                (m[..., 1:, :] * m[..., :-1, :]).flatten(1).sum(1)
            total = total + (gx.flatten(1).sum(1) + gy.flatten(1).sum(1)) / count.clamp(min=1)
        return total / self.num_scales
