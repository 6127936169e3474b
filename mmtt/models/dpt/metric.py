"""The nine depth metrics of DPT and Token Transforming's Table 3, as they were computed.

mmseg's ``DepthMetric`` computes all nine (``d1 d2 d3 abs_rel sq_rel rmse rmse_log log10
silog``) with the NYU Eigen crop, but its ``silog`` is ``sqrt(mean(e^2) - 0.5 mean(e)^2)``
with ``e = log(pred) - log(gt)``. Table 3's SILog (9.524 for DPT) follows BTS and the
Monocular-Depth-Estimation-Toolbox the NYU crop comes from: ``100 * sqrt(mean(e^2) -
mean(e)^2)``. :class:`BTSDepthMetric` reports that, so the figures compare with the table; the
other eight are mmseg's, per image and averaged over images, as in both.

It also keeps per-image metrics instead of every valid pixel of every image until the end
(about 1 GB for NYU's 654 test images in mmseg's metric).
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.logging import MMLogger, print_log
from mmseg.evaluation.metrics import DepthMetric
from mmseg.registry import METRICS
from prettytable import PrettyTable
from torch import Tensor


@METRICS.register_module()
class BTSDepthMetric(DepthMetric):
    """mmseg's ``DepthMetric`` with SILog as BTS and Table 3 report it (x100, lambda = 1).

    Args:
        depth_metrics: subset of :attr:`METRICS` to report; None for all nine.
        **kwargs: ``DepthMetric`` arguments (``min_depth_eval``, ``max_depth_eval``,
            ``crop_type``, ``depth_scale_factor``, ``output_dir``...).
    """

    def __init__(self, depth_metrics: Optional[Sequence[str]] = None, **kwargs) -> None:
        # mmseg 1.2.2 checks depth_metrics with isinstance(x, [tuple, list]), which raises.
        super().__init__(depth_metrics=None, **kwargs)
        if depth_metrics is not None:
            bad = [m for m in depth_metrics if m not in self.METRICS]
            if bad:
                raise ValueError(f'depth_metrics {bad} unknown; choose from {self.METRICS}')
            self.metrics = tuple(depth_metrics)

    @staticmethod
    def _calc_all_metrics(gt_depth: Tensor, pred_depth: Tensor) -> Dict[str, float]:
        """Metrics of one image's valid pixels ``[N]`` (N > 0)."""
        metrics = DepthMetric._calc_all_metrics(gt_depth, pred_depth)
        err = torch.log(pred_depth) - torch.log(gt_depth)
        metrics['silog'] = (100 * torch.sqrt(err.pow(2).mean() - err.mean().pow(2))).item()
        return metrics

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """As mmseg (including writing ``output_dir`` PNGs), then reduce the image's valid
        pixels to its metrics; images without valid pixels are left out (as NaN in BTS)."""
        start = len(self.results)
        super().process(data_batch, data_samples)
        per_image = [self._calc_all_metrics(gt, pred) for gt, pred in self.results[start:]
                     if gt.numel() > 0]
        self.results[start:] = per_image

    def compute_metrics(self, results: List[Dict[str, float]]) -> Dict[str, float]:
        """Mean of each metric over images; printed as a table, as mmseg's."""
        logger: MMLogger = MMLogger.get_current_instance()
        if self.format_only:
            logger.info(f'results are saved to {self.output_dir}')
            return OrderedDict()
        if not results:
            raise ValueError('no image had valid ground-truth depth within '
                             f'[min_depth_eval={self.min_depth_eval}, '
                             f'max_depth_eval={self.max_depth_eval}]')
        metrics = OrderedDict((k, sum(r[k] for r in results) / len(results))
                              for k in self.metrics)
        table = PrettyTable()
        for key, value in metrics.items():
            table.add_column(key, [round(value, 5)])
        print_log('results:', logger)
        print_log('\n' + table.get_string(), logger=logger)
        return metrics
