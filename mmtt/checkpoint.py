"""Loading official OpenMMLab checkpoints under torch's ``weights_only=True`` default.

torch >= 2.6 unpickles checkpoints with ``weights_only=True`` unless told otherwise, and
MMEngine calls ``torch.load`` without the argument. Checkpoints written by an MMEngine
``Runner`` (all official OpenMMLab 2.x checkpoints) carry a ``message_hub`` with MMEngine
``HistoryBuffer`` objects and numpy arrays and scalars, which the safe unpickler refuses.

:func:`allow_openmmlab_checkpoints` adds exactly those types to torch's allow-list, so such
checkpoints load while the unpickler stays in its safe mode: nothing else gets through, and
no file is ever unpickled with ``weights_only=False``.
"""
import os
import re
from typing import Dict

import numpy as np
import torch
from torch import nn


def _numpy_globals() -> list:
    try:   # numpy 2 renamed numpy.core to numpy._core
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    allowed = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (np.dtypes.Float64DType...)
    allowed += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                           np.int16, np.int32, np.int64, np.uint8, np.bool_)]
    return allowed


def allow_openmmlab_checkpoints() -> None:
    """Allow-list the non-tensor types found in MMEngine-written checkpoints (idempotent)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    # The message hub pickles HistoryBuffer's statistics methods as getattr(HistoryBuffer,
    # 'min') and so on. The safe unpickler still refuses to call anything not allow-listed,
    # so getattr only ever fetches such attributes, it cannot run them.
    torch.serialization.add_safe_globals(_numpy_globals() + [HistoryBuffer, getattr])


def checkpoint_shapes(path: str) -> Dict[str, torch.Size]:
    """Shapes of the state dict in the checkpoint at ``path`` (``module.`` prefixes removed, as
    MMEngine loads it), raising ``ValueError`` with one line for a file that is missing, corrupt
    or not a checkpoint.

    A local file is memory-mapped, so its tensors are not read; a URL is fetched by MMEngine
    (into its cache, where the later load finds it).
    """
    allow_openmmlab_checkpoints()
    if '://' in path:
        from mmengine.runner.checkpoint import CheckpointLoader
        checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    else:
        if not os.path.exists(path):
            raise ValueError(f'checkpoint {path}: no such file')
        if not os.path.isfile(path):
            raise ValueError(f'checkpoint {path}: not a file')
        checkpoint = _read_local(path)
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f'checkpoint {path} is not a model checkpoint: it holds a '
                         f'{type(checkpoint).__name__}, not a state dict of tensors (or a dict '
                         'with one under "state_dict")')
    return {re.sub(r'^module\.', '', k): v.shape for k, v in state.items()}


def _read_local(path: str) -> object:
    try:
        try:
            return torch.load(path, map_location='cpu', mmap=True)
        except RuntimeError as err:
            if 'mmap' not in str(err):
                raise
            return torch.load(path, map_location='cpu')   # the legacy (pre-zip) format
    except Exception as err:   # torch raises several kinds for a file it cannot unpickle
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f'checkpoint {path} cannot be read, corrupt or not a PyTorch file '
                         f'({type(err).__name__}: {first})') from None


def check_backbone_keys(model: nn.Module, shapes: Dict[str, torch.Size], path: str) -> None:
    """Raise ``ValueError`` unless the checkpoint's ``backbone.*`` entries are exactly the
    backbone's state dict, key for key and shape for shape.

    MMEngine's ``load_checkpoint`` only logs a warning for missing, unexpected or mis-shaped
    keys, and a test run then reports a metric from random weights.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        return
    wanted = {f'backbone.{k}': v.shape for k, v in backbone.state_dict().items()}
    given = {k: v for k, v in shapes.items() if k.startswith('backbone.')}
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    reshaped = [k for k in wanted if k in given and tuple(given[k]) != tuple(wanted[k])]
    problems = []
    if missing:
        problems.append(f'{len(missing)} of its {len(wanted)} keys missing (e.g. {missing[0]})')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
    if reshaped:
        k = reshaped[0]
        problems.append(f'{len(reshaped)} of another shape (e.g. {k}: {tuple(given[k])} in the '
                        f'checkpoint, {tuple(wanted[k])} in the model)')
    if problems:
        raise ValueError(f'checkpoint {path} does not fit the model\'s backbone: '
                         f'{"; ".join(problems)}; pass --non-strict to load it anyway')
