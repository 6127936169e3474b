"""Start-up hook that lets torchvision import on a CPU-only build of torch.

torchvision 0.28's native ``_C`` extension links CUDA libraries. With a CPU build of torch it
cannot load, and ``import torchvision`` then fails with ``operator torchvision::nms does not
exist`` (it registers fake kernels for that op unconditionally), which also breaks ``timm`` and
``mmseg.models``. ``tools/setup_env.sh`` installs this hook (a ``.pth`` line) only when that
happens. On first ``import torchvision`` it checks again, and only if ``_C`` cannot load it
defines ``torchvision::nms`` and ``torchvision::qnms`` with a pure-PyTorch implementation.
With a CUDA build of torch, or a loadable ``_C``, it does nothing.

Standard library only at start-up: torch is imported when torchvision is.
"""
import glob
import importlib.abc
import importlib.util
import os
import sys

_LIBRARY = None  # keeps the torch.library registration alive


def _native_ops_load(package_dir: str) -> bool:
    import torch
    if torch.version.cuda is not None:
        return True
    for path in glob.glob(os.path.join(package_dir, '_C*.so')):
        try:
            torch.ops.load_library(path)
            return True
        except OSError:
            return False
    return False


def _nms(dets, scores, iou_threshold: float):
    """Greedy NMS with torchvision's semantics (box area without the +1)."""
    import torch
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.float().unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    ix1 = torch.maximum(x1[:, None], x1[None])
    iy1 = torch.maximum(y1[:, None], y1[None])
    ix2 = torch.minimum(x2[:, None], x2[None])
    iy2 = torch.minimum(y2[:, None], y2[None])
    inter = (ix2 - ix1).clamp_min(0) * (iy2 - iy1).clamp_min(0)
    iou = inter / (areas[:, None] + areas[None] - inter)
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _qnms(dets, scores, iou_threshold: float):
    return _nms(dets.dequantize(), scores.dequantize(), iou_threshold)


def _define_ops() -> None:
    global _LIBRARY
    import torch
    try:
        torch.ops.torchvision.nms.default
        return   # another copy of this hook got there first
    except (AttributeError, RuntimeError):
        pass
    _LIBRARY = torch.library.Library('torchvision', 'FRAGMENT')
    _LIBRARY.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _LIBRARY.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _LIBRARY.impl('nms', _nms, 'CPU')
    _LIBRARY.impl('qnms', _qnms, 'QuantizedCPU')


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != 'torchvision':
            return None
        sys.meta_path.remove(self)  # decide once, and let the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or _native_ops_load(os.path.dirname(spec.origin)):
            return spec
        _define_ops()
        exec_module = spec.loader.exec_module

        def exec_and_enable_nms(module):
            exec_module(module)
            # torchvision.ops.nms asserts that _C loaded; nms is now defined without it.
            import torchvision.ops.boxes
            torchvision.ops.boxes._assert_has_ops = lambda: None

        spec.loader.exec_module = exec_and_enable_nms
        return spec


def install() -> None:
    """Called from the ``.pth`` line at interpreter start-up."""
    # By class name: the .pth may load this file more than once, each time as a new module.
    if 'torchvision' not in sys.modules and not any(
            type(f).__name__ == _TorchvisionFinder.__name__ for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
