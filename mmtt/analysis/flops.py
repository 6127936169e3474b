"""FLOP counting with MMEngine's maintained counter (fvcore's conventions).

A multiply-add counts as one FLOP and element-wise ops (add, softmax, norms...) are not
counted; :func:`count_flops` lists every op it did not count, so nothing is hidden. Two
handles are added: ``aten::scaled_dot_product_attention`` (its two matrix products), which
MMEngine 0.10.7 does not know and which every fused-attention model uses, and
``aten::scatter_add`` / ``aten::index_add`` (one add per source element), the way the
sparse forms of W (merging, ``top_k`` transforms) apply themselves, which would otherwise
count as free; and ``aten::baddbmm`` (its batched product, as ``bmm``), which the nearest
recovery of eq. 9 and Hourglass's distances use and MMEngine does not know.
"""
from collections import Counter
from dataclasses import dataclass
from math import prod
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

# Attribute names under which mmtt's hosts hold their reduction modules.
COMPRESSION_MODULES = ('token_transform', 'window_transform')


def _shape(value) -> List[int]:
    return value.type().sizes()


def scatter_add_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``scatter_add(self, dim, index, src)`` and ``index_add(self, dim, index, source)``: one
    add per source element (its multiplications, if any, were an element-wise mul)."""
    return prod(_shape(inputs[3]))


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(input, batch1, batch2)``: ``batch * n * k * m`` multiply-adds for
    ``batch1: [batch, n, k]`` and ``batch2: [batch, k, m]`` (the added input is element-wise)."""
    a, b = _shape(inputs[1]), _shape(inputs[2])
    return prod(a) * b[-1]


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``Q K^T`` and ``A V``: ``batch * L * S * (E + Ev)`` multiply-adds."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


@dataclass
class FlopReport:
    """Total FLOPs, per top-level module, the ops that were seen but not counted, and the
    FLOPs inside the token-reduction modules themselves (``compression``)."""
    total: int
    by_module: Dict[str, int]
    uncounted: Counter
    compression: int = 0

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def count_flops(model: nn.Module, inputs: Tuple[Any, ...]) -> FlopReport:
    """Count the FLOPs of ``model(*inputs)`` (jit trace of one forward, in eval mode)."""
    from mmengine.analysis import FlopAnalyzer
    # Restored module by module: a wrapper built in training mode around an eval-mode model
    # must not switch the model to training mode on the way out.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit,
                                   'aten::baddbmm', baddbmm_flop_jit)
            # The sparse forms of W (merging, top_k transforms) apply themselves by index/scatter-add.
            analyzer.set_op_handle('aten::scatter_add_', scatter_add_flop_jit,
                                   'aten::scatter_add', scatter_add_flop_jit,
                                   'aten::index_add_', scatter_add_flop_jit,
                                   'aten::index_add', scatter_add_flop_jit)
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analyzer.total()
            per_module = analyzer.by_module()
            uncounted = Counter(analyzer.unsupported_ops())
    finally:
        for module, training in modes:
            module.training = training
    by_module = {name: n for name, n in per_module.items() if name and '.' not in name}
    compression = sum(n for name, n in per_module.items()
                      if name.rsplit('.', 1)[-1] in COMPRESSION_MODULES)
    return FlopReport(total, by_module, uncounted, compression)
