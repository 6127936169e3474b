"""Timing shared by the speed tools (benchmark, pareto, reduction_cost)."""
import time
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (CUDA events on a GPU, so queued work is counted)."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    if device.type != 'cpu':
        getattr(torch, device.type).synchronize()
    return time.perf_counter() - t0


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Reduced precision for forwards; float32 runs as is."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
