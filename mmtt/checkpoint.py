"""Loading official OpenMMLab checkpoints under torch's ``weights_only=True`` default.

torch >= 2.6 unpickles checkpoints with ``weights_only=True`` unless told otherwise, and
MMEngine calls ``torch.load`` without the argument. Checkpoints written by an MMEngine
``Runner`` (all official OpenMMLab 2.x checkpoints) carry a ``message_hub`` with MMEngine
``HistoryBuffer`` objects and numpy arrays and scalars, which the safe unpickler refuses.

:func:`allow_openmmlab_checkpoints` adds exactly those types to torch's allow-list, so such
checkpoints load while the unpickler stays in its safe mode: nothing else gets through, and
no file is ever unpickled with ``weights_only=False``.
"""
import numpy as np
import torch


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
