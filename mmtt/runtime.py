"""Runner set-up shared by the test and train tools: CPU distributed runs, checkpoints."""
import logging
import os
import os.path as osp
import sys
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from .checkpoint import allow_openmmlab_checkpoints


@MODEL_WRAPPERS.register_module()
class MMCPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for a model on the CPU: DDP takes no ``device_ids`` then,
    but MMEngine's ``Runner.wrap_model`` always passes the local rank."""

    def __init__(self, module, device_ids=None, **kwargs) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def load_config(path: str, cfg_options: Optional[dict], work_dir: Optional[str]) -> Config:
    """``Config.fromfile`` with ``--cfg-options`` merged and the OpenMMLab default work dir."""
    cfg = Config.fromfile(path)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


# Whether this process made the gloo group of a CPU launch (one per process, for finish_runtime).
_MADE_GROUP = False


def prepare_runtime(cfg: Config, launcher: str) -> Config:
    """Make ``cfg`` run under ``launcher`` on this machine; returns ``cfg``.

    With GPUs nothing changes. Without, a distributed launch uses the gloo backend, one CPU
    process per requested "GPU": the process group is created here, because MMEngine's
    ``init_dist`` calls ``torch.cuda.set_device``, and the model is wrapped without device ids.
    """
    allow_openmmlab_checkpoints()
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    if launcher != 'pytorch':
        raise ValueError(f'--launcher {launcher} without GPUs is not supported; use pytorch '
                         '(tools/dist_test.sh) for CPU processes')
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.model_wrapper_cfg = dict(type='MMCPUDistributedDataParallel')
    # SyncBN has no CPU implementation: plain BN gives the same results in eval mode.
    cfg.model = _replace_syncbn(cfg.model)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group('gloo', rank=int(os.environ['RANK']),
                                             world_size=int(os.environ['WORLD_SIZE']))
        global _MADE_GROUP
        _MADE_GROUP = True
    return cfg


def finish_runtime() -> None:
    """End a CPU process of a distributed launch whose gloo group :func:`prepare_runtime` made:
    the group is destroyed and the process exits without interpreter teardown. Left to teardown,
    threads of the group (or of libraries imported with the model) abort a rank now and then
    ("terminate called without an active exception", exit -6, about 1 run in 5 here) after its
    results are written, and the launcher then fails the run. Elsewhere this does nothing."""
    if not _MADE_GROUP:
        return
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


def _replace_syncbn(node):
    if isinstance(node, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else _replace_syncbn(v))
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_replace_syncbn(v) for v in node)
    return node
