"""Drawing a token reduction on its image: informative tokens, rows of W, shared tokens, partitions.

The pieces of the paper's Fig. 5 (:mod:`mmtt.tools.visualize`) and of the demo's figure
(:mod:`mmtt.tools.demo`), as ToMe keeps its drawing in ``tome/vis.py``. Each works on a
:class:`mmtt.pretrained.ReductionRecord` of image 0 of the batch, or on arrays
(:func:`partition_image`); matplotlib is imported only by :func:`figure`, and the ``draw_*``
functions take the axes to draw on.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .pretrained import IMAGENET_MEAN, IMAGENET_STD, ReductionRecord, column_shares

__all__ = ['fan_out', 'pick_rows', 'rows_on_object', 'display_image', 'token_centres', 'draw_informative',
           'draw_row', 'draw_fan_out', 'figure', 'reduction_assignment', 'partition_colours',
           'partition_image', 'draw_partition']


def fan_out(record: ReductionRecord, threshold: float) -> Tensor:
    """``[B, N]``: for each input token, how many output tokens get a share >= ``threshold``."""
    return (column_shares(record) >= threshold).sum(dim=1)


def pick_rows(record: ReductionRecord, count: int, threshold: float,
              candidates: Optional[Tensor] = None) -> List[int]:
    """Rows of W (of image 0) that share input tokens with each other, most shared first.

    Greedy: start from the row that shares the most tokens with other rows, then add the row
    sharing the most with those already picked, so the heatmaps show overlaps as in Fig. 5.

    Args:
        candidates: ``[M]`` bool, rows allowed (e.g. informative tokens on the object); all
            rows when None or when it allows none.
    """
    used = (column_shares(record)[0] >= threshold).double()        # [M, N]
    overlap = used @ used.T
    overlap.fill_diagonal_(0)
    allowed = torch.ones(used.shape[0], dtype=torch.bool)
    if candidates is not None and bool(candidates.any()):
        allowed = candidates.clone()
    count = min(count, int(allowed.sum()))
    first = overlap.sum(1).masked_fill(~allowed, -1)
    picked = [int(first.argmax())]
    while len(picked) < count:
        score = overlap[:, picked].sum(1).masked_fill(~allowed, -1)
        score[picked] = -2
        picked.append(int(score.argmax()))
    return picked


def rows_on_object(record: ReductionRecord, saliency: Tensor, grid: Tuple[int, int],
                   threshold: float = 0.5) -> Tensor:
    """``[M]`` bool: rows whose informative token lies where ``saliency [B, 1, H, W]`` (image 0)
    exceeds ``threshold``, read at the token's patch centre."""
    xy = token_centres(record.kept_index()[0], grid, tuple(saliency.shape[-2:]))
    x, y = torch.from_numpy(xy).long().unbind(1)
    return saliency[0, 0, y, x] > threshold


def display_image(images: Tensor) -> np.ndarray:
    """Undo ImageNet normalisation of image 0: ``[H, W, 3]`` in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def token_centres(index: Tensor, grid: Tuple[int, int], img_size: Tuple[int, int]) -> np.ndarray:
    """``[K, 2]`` pixel (x, y) centres of patch tokens with flat indices ``index``."""
    h, w = grid
    rows, cols = (index // w).double(), (index % w).double()
    return np.stack([((cols + 0.5) * img_size[1] / w).numpy(), ((rows + 0.5) * img_size[0] / h).numpy()], 1)


def draw_informative(ax, image: np.ndarray, record: ReductionRecord, grid: Tuple[int, int],
                     labels: Dict[int, str]) -> None:
    """Image with every informative token as a dot; ``labels`` maps rows to printed names."""
    kept = record.kept_index()[0]
    xy = token_centres(kept, grid, image.shape[:2])
    ax.imshow(image)
    ax.scatter(xy[:, 0], xy[:, 1], s=6, c='yellow', edgecolors='black', linewidths=0.3)
    for row, text in labels.items():
        ax.annotate(text, xy[row], color='white', fontsize=8, weight='bold', ha='center', va='center',
                    bbox=dict(boxstyle='circle,pad=0.15', fc='red', ec='none', alpha=0.8))
    ax.set_title(f'{len(kept)} informative tokens of {record.reduction.matrix.num_in} '
                 f'(block {record.layer})', fontsize=9)
    ax.axis('off')


def draw_row(ax, image: np.ndarray, record: ReductionRecord, row: int, grid: Tuple[int, int],
             label: str) -> None:
    """Heatmap of row ``row`` of W (image 0) over the image; the row's own token starred."""
    w_row = record.reduction.matrix.dense()[0, row].double()
    heat = (w_row / w_row.max()).reshape(grid).numpy()
    ax.imshow(image * 0.6)
    # Coefficients under 1% of the row's maximum are left transparent: the photo shows there.
    ax.imshow(np.ma.masked_less(heat, 0.01), cmap='inferno', vmin=0, vmax=1, alpha=0.9,
              extent=(0, image.shape[1], image.shape[0], 0), interpolation='nearest')
    xy = token_centres(record.kept_index()[0, row:row + 1], grid, image.shape[:2])[0]
    ax.plot(*xy, marker='*', color='cyan', ms=10, mec='black', mew=0.5)
    ax.set_title(f'W row of token {label}: {int((w_row > 0.01 * w_row.max()).sum())} inputs '
                 '> 1% of max', fontsize=8)
    ax.axis('off')


def draw_fan_out(ax, image: np.ndarray, record: ReductionRecord, grid: Tuple[int, int],
                 threshold: float) -> str:
    """Map of how many informative tokens each token feeds; returns the summary sentence."""
    counts = fan_out(record, threshold)[0]
    ax.imshow(image)
    shown = ax.imshow(counts.reshape(grid).numpy(), cmap='viridis', alpha=0.75,
                      extent=(0, image.shape[1], image.shape[0], 0), interpolation='nearest')
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    shared = int((counts >= 2).sum())
    text = (f'{shared} of {counts.numel()} tokens ({100 * shared / counts.numel():.0f}%) feed >= 2 '
            f'informative tokens (share >= {threshold:g}); max {int(counts.max())}')
    ax.set_title('informative tokens fed per token', fontsize=9)
    ax.axis('off')
    return text


def figure(images: Tensor, record: ReductionRecord, grid: Tuple[int, int], rows: Sequence[int],
           threshold: float, path: str, title: str) -> str:
    """Write the Fig. 5-style PNG; returns the fan-out summary sentence."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    image = display_image(images)
    labels = {row: str(k + 1) for k, row in enumerate(rows)}
    cols = 2 + len(rows)
    fig, axes = plt.subplots(1, cols, figsize=(2.9 * cols, 3.4))
    draw_informative(axes[0], image, record, grid, labels)
    for ax, row in zip(axes[1:], rows):
        draw_row(ax, image, record, row, grid, labels[row])
    summary = draw_fan_out(axes[-1], image, record, grid, threshold)
    fig.suptitle(f'{title}\n{summary}', fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return summary


def reduction_assignment(record: ReductionRecord) -> Tensor:
    """``[N]``: for each input token of image 0, the output token it sends most of its mass to.

    Read off the reduction as ``TokenRecovery(mode='share')`` reads it
    (:meth:`mmtt.functional.TokenMatrix.largest_share`): for Token Transforming the informative
    token it is most similar to, for merging its group, for pruning the row holding it. The
    input tokens of a first reduction are the image's patches in raster order.
    """
    return record.reduction.matrix.largest_share()[0]


def partition_colours(count: int, seed: int = 0) -> np.ndarray:
    """``[count, 3]`` random RGB colours in [0.1, 1] (one per output token), the same for a seed."""
    return np.random.RandomState(seed).uniform(0.1, 1.0, size=(count, 3))


def partition_image(image: np.ndarray, assignment, grid: Tuple[int, int], colours: Optional[np.ndarray] = None,
                    alpha: float = 0.6, outline: bool = True, singletons: bool = False) -> np.ndarray:
    """The image with every patch coloured by the output token it is assigned to.

    As ToMe's visualisation, each group of patches (the patches assigned to one output token)
    is filled with the photo's mean colour over the group; here that is mixed with the group's
    own colour (weight ``alpha``) and, with ``outline``, pixels next to another group take the
    group's colour at full strength. A patch alone in its group is only averaged unless
    ``singletons``, so the groups that merge several patches stand out.

    Args:
        image: ``[H, W, 3]`` in [0, 1].
        assignment: ``[h * w]`` ints (array or tensor), patch ``p`` (raster order) assigned to
            output token ``assignment[p]`` (e.g. :func:`reduction_assignment`).
        grid: ``(h, w)`` patches; the image is split into ``h x w`` equal cells (pixel row
            ``y`` lies in patch row ``y * h // H``).
        colours: ``[M, 3]`` in [0, 1], one per output token; default
            :func:`partition_colours` of ``max(assignment) + 1``.
        alpha: weight of a group's colour against its mean photo colour, in [0, 1].
        outline: draw group borders in the group's colour.
        singletons: colour and outline single-patch groups as well.

    Returns:
        ``[H, W, 3]`` float64 in [0, 1].
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be [H, W, 3], got shape {image.shape}')
    h, w = grid
    if isinstance(assignment, Tensor):
        assignment = assignment.detach().cpu().numpy()
    labels = np.asarray(assignment).reshape(-1)
    if labels.size != h * w or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'assignment must hold {h} x {w} = {h * w} ints, got {labels.size} of {labels.dtype}')
    if labels.min() < 0:
        raise ValueError('assignment must be >= 0')
    if not 0 <= alpha <= 1:
        raise ValueError(f'alpha={alpha} must be in [0, 1]')
    count = int(labels.max()) + 1
    colours = partition_colours(count) if colours is None else np.asarray(colours, dtype=np.float64)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) < count:
        raise ValueError(f'colours must be [M, 3] with M >= {count}, got shape {colours.shape}')
    height, width = image.shape[:2]
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    pixels = labels.reshape(h, w)[rows[:, None], cols[None, :]]       # [H, W] output token per pixel
    flat = pixels.ravel()
    area = np.bincount(flat, minlength=len(colours)).astype(np.float64)
    means = np.stack([np.bincount(flat, weights=image[..., c].ravel(), minlength=len(colours))
                      for c in range(3)], 1) / np.maximum(area, 1)[:, None]
    shown = np.ones(len(colours), dtype=bool) if singletons else np.bincount(labels, minlength=len(colours)) > 1
    fill = np.where(shown[:, None], (1 - alpha) * means + alpha * colours, means)
    out = fill[pixels]
    if outline:
        edge = np.zeros(pixels.shape, dtype=bool)
        vertical, horizontal = pixels[1:] != pixels[:-1], pixels[:, 1:] != pixels[:, :-1]
        edge[1:] |= vertical
        edge[:-1] |= vertical
        edge[:, 1:] |= horizontal
        edge[:, :-1] |= horizontal
        edge &= shown[pixels]
        out[edge] = colours[pixels[edge]]
    return out.clip(0, 1)


def draw_partition(ax, image: np.ndarray, assignment, grid: Tuple[int, int], title: str, **kwargs) -> None:
    """:func:`partition_image` on ``ax``; ``kwargs`` go to it."""
    ax.imshow(partition_image(image, assignment, grid, **kwargs), interpolation='nearest')
    ax.set_title(title, fontsize=9)
    ax.axis('off')
