"""Fine-tune an mmseg/mmdet model with mmtt inserted (optional: the method is training-free)."""
import argparse
import os

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from ..runtime import finish_runtime, load_config, prepare_runtime


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mmtt: train (fine-tune) an mmseg/mmdet model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from a checkpoint, or from the latest in work-dir if none given')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (as in OpenMMLab tools)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_train_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return prepare_runtime(cfg, args.launcher)


def main(argv=None) -> None:
    args = parse_args(argv)
    Runner.from_cfg(build_train_config(args)).train()
    finish_runtime()   # a CPU process of dist_train.sh ends here


if __name__ == '__main__':
    main()
