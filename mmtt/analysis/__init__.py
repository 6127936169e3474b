"""Analysis of a model's cost: FLOP counting, and building a config's model to count or time it.

- :mod:`.flops`: :func:`count_flops` (MMEngine's counter with mmtt's op handles).
- :mod:`.forward`: :class:`TensorForward`, any mmseg or mmdet model as a one-argument module.
- :mod:`.build`: a config's model, unmodified or with mmtt (:func:`build_model`,
  :func:`unmodified`, :func:`config_flops`, :func:`default_shape`).

The command-line tools (:mod:`mmtt.tools.get_flops`, :mod:`mmtt.tools.benchmark`) are built on
these; nothing here imports a tool.
"""
from .build import build_model, config_flops, default_shape, detection_test_shape, unmodified
from .flops import COMPRESSION_MODULES, FlopReport, count_flops, scatter_add_flop_jit, sdpa_flop_jit
from .forward import DetTensorForward, TensorForward, det_data_samples, is_detector, tensor_forward

__all__ = ['COMPRESSION_MODULES', 'FlopReport', 'count_flops', 'scatter_add_flop_jit', 'sdpa_flop_jit',
           'TensorForward', 'DetTensorForward', 'tensor_forward', 'is_detector', 'det_data_samples',
           'build_model', 'unmodified', 'config_flops', 'default_shape', 'detection_test_shape']
