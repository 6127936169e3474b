"""Test (and evaluate) an mmseg, mmdet or mmpretrain model, with the OpenMMLab ``tools/test.py``
flags."""
import argparse
import copy
import os

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from ..checkpoint import check_backbone_keys, checkpoint_shapes
from ..runtime import finish_runtime, load_config, prepare_runtime
from ._cli import exits_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mmtt: test (and eval) an mmseg/mmdet/mmpretrain model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for logs and the metrics JSON')
    parser.add_argument('--out', help='segmentation: directory to save predictions; '
                                      'detection, classification: a .pkl file to dump the results to')
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


def _is_classification(cfg: Config) -> bool:
    return cfg.get('default_scope') == 'mmpretrain'


def _trigger_visualization(cfg: Config, args: argparse.Namespace) -> None:
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise ValueError('--show/--show-dir need default_hooks.visualization in the config')
    hook = hooks['visualization']
    if _is_classification(cfg):   # mmpretrain's VisualizationHook: enable, out_dir
        hook['enable'] = True
        hook['show'] = args.show
        hook['wait_time'] = args.wait_time
        hook['out_dir'] = args.show_dir
        return
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if _is_detection(cfg):
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


def _classification_tta(cfg: Config) -> None:
    # As mmpretrain's tools/test.py: without tta_model / tta_pipeline, flip and average scores.
    cfg.setdefault('tta_model', dict(type='mmpretrain.AverageClsScoreTTA'))
    if 'tta_pipeline' not in cfg:
        pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
        flips = [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)]
        pipeline[-1] = dict(type='TestTimeAug', transforms=[flips, [pipeline[-1]]])
        cfg.tta_pipeline = pipeline


def build_test_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _trigger_visualization(cfg, args)
    if args.tta and _is_classification(cfg):
        _classification_tta(cfg)   # mmpretrain's own default: flip, class scores averaged
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        if _is_detection(cfg) or _is_classification(cfg):
            if not args.out.endswith(('.pkl', '.pickle')):
                raise ValueError(f'--out {args.out}: detection and classification results go to a .pkl file')
            dump = 'DumpDetResults' if _is_detection(cfg) else 'DumpResults'
            evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
            cfg.test_evaluator = list(evaluators) + [dict(type=dump, out_file_path=args.out)]
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
    metrics = runner.test()
    finish_runtime()   # a CPU process of dist_test.sh ends here
    return metrics


if __name__ == '__main__':
    main()
