"""Runner set-up shared by the test and train tools: CPU distributed runs, checkpoints."""
import atexit
import os
import os.path as osp
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
        atexit.register(_destroy_process_group)
    return cfg


def _destroy_process_group() -> None:
    # Left to interpreter teardown, the gloo group's threads can abort a rank at exit
    # ("terminate called without an active exception", seen in 1 of about 10 CI runs).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _replace_syncbn(node):
    if isinstance(node, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else _replace_syncbn(v))
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_replace_syncbn(v) for v in node)
    return node
