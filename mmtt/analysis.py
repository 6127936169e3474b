"""FLOP counting with MMEngine's maintained counter (fvcore's conventions).

A multiply-add counts as one FLOP and element-wise ops (add, softmax, norms...) are not
counted; :func:`count_flops` lists every op it did not count, so nothing is hidden. The one
addition is a handle for ``aten::scaled_dot_product_attention`` (its two matrix products),
which MMEngine 0.10.7 does not know and which every fused-attention model uses.
"""
from collections import Counter
from dataclasses import dataclass
from math import prod
from typing import Any, Dict, List, Tuple

import torch
from torch import nn


def _shape(value) -> List[int]:
    return value.type().sizes()


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``Q K^T`` and ``A V``: ``batch * L * S * (E + Ev)`` multiply-adds."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


@dataclass
class FlopReport:
    """Total FLOPs, per top-level module, and the ops that were seen but not counted."""
    total: int
    by_module: Dict[str, int]
    uncounted: Counter

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def count_flops(model: nn.Module, inputs: Tuple[Any, ...]) -> FlopReport:
    """Count the FLOPs of ``model(*inputs)`` (jit trace of one forward, in eval mode)."""
    from mmengine.analysis import FlopAnalyzer
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analyzer.total()
            by_module = {name: count for name, count in analyzer.by_module().items()
                         if name and '.' not in name}
            uncounted = Counter(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    return FlopReport(total, by_module, uncounted)
