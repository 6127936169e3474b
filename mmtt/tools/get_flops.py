"""GFLOPs of a config's model, unmodified beside compressed, compression ops counted.

The unmodified model is the same config with ``model.backbone.reduce_layers=[]`` (mmtt's
backbones are then their host's model exactly). Counting is MMEngine's counter with an SDPA
handle; ops it does not count are listed. Building and counting live in :mod:`mmtt.analysis`;
this module is the command line only.
"""
import argparse

from mmengine.config import Config, DictAction

from ..analysis import config_flops, default_shape, unmodified
from ._cli import exits_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (default: the test crop size, else 512 512)')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) not in (1, 2):
            parser.error(f'--shape takes H [W], got {" ".join(map(str, args.shape))}')
        if min(args.shape) < 1:
            parser.error(f'--shape {" ".join(map(str, args.shape))}: H and W must be >= 1')
    return args


@exits_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    shape = tuple(args.shape * 2 if args.shape and len(args.shape) == 1 else args.shape or default_shape(cfg))
    full = config_flops(unmodified(cfg), shape, args.part)
    reduced = config_flops(cfg, shape, args.part)
    saving = 1 - reduced.total / full.total
    print(f'{args.config}: {args.part}, input 1x3x{shape[0]}x{shape[1]}')
    print(f'  unmodified: {full.gflops:8.2f} GFLOPs')
    print(f'  mmtt:       {reduced.gflops:8.2f} GFLOPs  ({100 * saving:.1f}% fewer, compression ops counted)')
    print('  not counted (element-wise by convention, or unknown to the counter): '
          + ', '.join(sorted(set(reduced.uncounted) | set(full.uncounted))))
    return dict(config=args.config, part=args.part, shape=list(shape), gflops_unmodified=full.gflops,
                gflops=reduced.gflops, saving=saving)


if __name__ == '__main__':
    main()
