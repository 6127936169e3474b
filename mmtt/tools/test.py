"""Test (and evaluate) an mmseg or mmdet model, with the OpenMMLab ``tools/test.py`` flags."""
import argparse
import os

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from ..checkpoint import check_backbone_keys, checkpoint_shapes
from ..runtime import load_config, prepare_runtime
from ._cli import exits_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mmtt: test (and eval) an mmseg/mmdet model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for logs and the metrics JSON')
    parser.add_argument('--out', help='segmentation: directory to save predictions; '
                                      'detection: a .pkl file to dump the results to')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='interval of --show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (as in OpenMMLab tools)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--non-strict', action='store_true',
                        help='load a checkpoint whose backbone keys or shapes differ from the '
                             "model's (by default that is an error: the metric would come from "
                             'partly random weights)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _is_detection(cfg: Config) -> bool:
    return cfg.get('default_scope') == 'mmdet'


def _trigger_visualization(cfg: Config, args: argparse.Namespace) -> None:
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise ValueError('--show/--show-dir need default_hooks.visualization in the config')
    hook = hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if _is_detection(cfg):
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


def build_test_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _trigger_visualization(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        if _is_detection(cfg):
            if not args.out.endswith(('.pkl', '.pickle')):
                raise ValueError(f'--out {args.out}: detection results go to a .pkl file')
            evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
            cfg.test_evaluator = list(evaluators) + [dict(type='DumpDetResults', out_file_path=args.out)]
        else:
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
    return prepare_runtime(cfg, args.launcher)


@exits_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = build_test_config(args)
    shapes = checkpoint_shapes(args.checkpoint)   # a missing or corrupt file fails before the build
    runner = Runner.from_cfg(cfg)
    if not args.non_strict:
        check_backbone_keys(runner.model, shapes, args.checkpoint)
    return runner.test()


if __name__ == '__main__':
    main()
