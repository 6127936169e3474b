"""Pareto fronts, table and figure of a fidelity-against-speed sweep (:mod:`mmtt.tools.pareto`).

A point is a dict with at least ``label``, ``keep_ratio``, ``gflops_ratio``, ``speedup_b1`` and
``iou``; the unmodified model is the point labelled :data:`UNMODIFIED`.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

UNMODIFIED = 'unmodified'

# Front name -> (point key of x, sign that makes larger x better, axis label); y is the IoU.
FRONTS = {
    'speed': ('speedup_b1', 1.0, 'measured speed-up, batch 1 (unmodified = 1)'),
    'gflops': ('gflops_ratio', -1.0, 'GFLOPs / unmodified GFLOPs (whole model)'),
}


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point dominates, both coordinates to be maximised.

    Point ``a`` dominates ``b`` when ``a >= b`` in both coordinates and ``a > b`` in at least
    one; equal points do not dominate each other, so both stay on the front.

    Args:
        points: ``(x, y)`` pairs, e.g. ``(speed-up, IoU)``.

    Returns:
        Indices into ``points``, in increasing ``x`` (then ``y``).
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)]
    return sorted(front, key=lambda i: points[i])


def mark_fronts(points: List[dict]) -> None:
    """Add ``front_speed`` / ``front_gflops`` (within the point's label) and ``global_front_speed``
    / ``global_front_gflops`` (across all labels, the unmodified model included) to each point.

    The unmodified model is on no label's own front: it is every curve's common anchor.
    """
    for axis, (key, sign, _) in FRONTS.items():
        for p in points:
            p[f'front_{axis}'] = False
        for group in _by_label(points).values():
            for i in pareto_front([(sign * p[key], p['iou']) for p in group]):
                group[i][f'front_{axis}'] = True
        on_global = set(pareto_front([(sign * p[key], p['iou']) for p in points]))
        for i, p in enumerate(points):
            p[f'global_front_{axis}'] = i in on_global


def best_at_speed(curve: Sequence[dict], speed: float) -> Optional[dict]:
    """The point of ``curve`` with the highest IoU among those at least ``speed`` fast
    (``speedup_b1``), or None when every point is slower: what a user of that curve can get at
    that speed without interpolating between measured settings."""
    fast = [p for p in curve if p['speedup_b1'] >= speed]
    return max(fast, key=lambda p: p['iou']) if fast else None


def interpolated_iou(curve: Sequence[dict], speed: float) -> Optional[float]:
    """IoU of ``curve``'s speed front, read linearly at ``speed`` between its two neighbouring
    front points (the unmodified model, at speed-up 1 and IoU 1, is every curve's first point);
    None outside the measured speeds. An estimate for a setting between measured ones."""
    front = [curve[i] for i in pareto_front([(p['speedup_b1'], p['iou']) for p in curve])]
    for slow, fast in zip(front, front[1:]):
        if slow['speedup_b1'] <= speed <= fast['speedup_b1']:
            if fast['speedup_b1'] == slow['speedup_b1']:
                return max(slow['iou'], fast['iou'])
            t = (speed - slow['speedup_b1']) / (fast['speedup_b1'] - slow['speedup_b1'])
            return slow['iou'] + t * (fast['iou'] - slow['iou'])
    return None


def equal_speed_rows(points: List[dict], ours: Sequence[str]) -> List[dict]:
    """For every point of a label not in ``ours`` (a peer), the best of ``ours`` at equal or
    higher measured speed-up: whether Token Transforming is on the front against every peer.

    Each row has the peer's ``label``, ``keep_ratio``, ``speedup_b1`` and ``iou``; ``best``
    (``'label@keep'`` of the best point of ours at least as fast, or None), ``best_speedup``,
    ``best_iou``, ``margin`` (``best_iou - iou``; None without such a point) and
    ``interpolated_margin`` (the best of ours read on each curve's front exactly at the peer's
    speed-up, minus the peer's IoU: see :func:`interpolated_iou`).
    """
    groups = _by_label(points)
    full = [p for p in points if p['label'] == UNMODIFIED]
    curves = {label: full + groups[label] for label in ours if label in groups}
    if not curves:   # nothing of ours was measured: there is nothing to compare
        return []
    rows = []
    for label, group in groups.items():
        if label in curves:
            continue
        for peer in sorted(group, key=lambda p: p['keep_ratio']):
            speed = peer['speedup_b1']
            candidates = [p for p in (best_at_speed(c, speed) for c in curves.values()) if p is not None]
            best = max(candidates, key=lambda p: p['iou']) if candidates else None
            read = [v for v in (interpolated_iou(c, speed) for c in curves.values()) if v is not None]
            rows.append(dict(label=label, keep_ratio=peer['keep_ratio'], speedup_b1=speed, iou=peer['iou'],
                             best=None if best is None else f"{best['label']}@{best['keep_ratio']:g}",
                             best_speedup=None if best is None else best['speedup_b1'],
                             best_iou=None if best is None else best['iou'],
                             margin=None if best is None else best['iou'] - peer['iou'],
                             interpolated_margin=max(read) - peer['iou'] if read else None))
    return rows


def print_equal_speed(rows: List[dict], ours: Sequence[str]) -> None:
    """The rows of :func:`equal_speed_rows`, with how many peer points ours match or beat."""
    if not rows:
        return
    print(f"\nat equal or higher speed-up, the best of {', '.join(ours)} against each peer point:")
    print(f"{'peer':<14} {'keep':>5} {'x b1':>6} {'IoU':>6}  {'best of ours':<20} {'x b1':>6} {'IoU':>6} "
          f"{'margin':>7} {'interp':>7}")
    fmt = lambda v, spec: '-' if v is None else format(v, spec)   # noqa: E731
    for r in rows:
        print(f"{r['label']:<14} {r['keep_ratio']:>5.2f} {r['speedup_b1']:>6.3f} {r['iou']:>6.3f}  "
              f"{fmt(r['best'], '<20')} {fmt(r['best_speedup'], '>6.3f')} {fmt(r['best_iou'], '>6.3f')} "
              f"{fmt(r['margin'], '>+7.3f')} {fmt(r['interpolated_margin'], '>+7.3f')}")
    held = sum(r['margin'] is not None and r['margin'] >= 0 for r in rows)
    print(f'ours at >= the IoU of {held} of {len(rows)} peer points at equal or higher speed-up')


def print_table(points: List[dict], skipped: List[dict]) -> None:
    """One row per point (``P``: on its label's speed front, ``G``: on the global one)."""
    head = (f"{'label':<14} {'keep':>5} {'GFLOPs':>7} {'ratio':>6} {'ms b1':>8} {'x b1':>6} "
            f"{'x bN':>6} {'IoU':>6} {'IoUmin':>6} {'MAE':>7} {'patchcos':>8} {'clscos':>7} front")
    print(head)
    for p in points:
        front = ('P' if p['front_speed'] else '') + ('G' if p['global_front_speed'] else '')
        print(f"{p['label']:<14} {p['keep_ratio']:>5.2f} {p['gflops']:>7.2f} {p['gflops_ratio']:>6.3f} "
              f"{p['latency_ms']:>8.2f} {p['speedup_b1']:>6.3f} {p['speedup_batch']:>6.3f} "
              f"{p['iou']:>6.3f} {p['iou_min']:>6.3f} {p['mae']:>7.4f} {p['patch_cos']:>8.4f} "
              f"{p['cls_cos']:>7.4f} {front}")
    for p in skipped:
        print(f"{p['label']:<14} {p['keep_ratio']:>5.2f} skipped: {p['skipped']}")


def _by_label(points: List[dict]) -> Dict[str, List[dict]]:
    groups: Dict[str, List[dict]] = {}
    for p in points:
        if p['label'] != UNMODIFIED:
            groups.setdefault(p['label'], []).append(p)
    return groups


def plot(points: List[dict], path: str, title: str, ours: Sequence[str] = ()) -> None:
    """IoU against measured speed-up and against GFLOPs ratio, one curve per label.

    Each curve joins its keep ratios in order (annotated); its own Pareto front is ringed, and
    the front across all labels (the unmodified model included) is a dashed black line. The
    labels in ``ours`` are drawn solid with round markers, the others (peers) dashed with
    square ones, so the two families read apart however many curves there are.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    groups = _by_label(points)
    # One colour per curve, given explicitly (the rings must not advance the cycle); tab10 has
    # ten, so more curves take tab20's.
    colours = plt.get_cmap('tab10' if len(groups) <= 10 else 'tab20')
    for ax, (axis, (key, _, xlabel)) in zip(axes, FRONTS.items()):
        for i, (label, group) in enumerate(groups.items()):
            group = sorted(group, key=lambda p: p['keep_ratio'])
            style = 'o-' if label in ours else 's--'
            line, = ax.plot([p[key] for p in group], [p['iou'] for p in group], style, ms=4, lw=1.3,
                            label=label, color=colours(i % colours.N))
            front = [p for p in group if p[f'front_{axis}']]
            ax.plot([p[key] for p in front], [p['iou'] for p in front], 'o', ms=10, mfc='none',
                    mec=line.get_color(), mew=1.5)
            for p in group:
                ax.annotate(f"{p['keep_ratio']:g}", (p[key], p['iou']), fontsize=7,
                            textcoords='offset points', xytext=(3, 3))
        best = sorted((p for p in points if p[f'global_front_{axis}']), key=lambda p: p[key])
        ax.plot([p[key] for p in best], [p['iou'] for p in best], 'k--', lw=1, label='global Pareto front')
        full = next(p for p in points if p['label'] == UNMODIFIED)
        ax.plot([full[key]], [full['iou']], 'k*', ms=11, label=UNMODIFIED)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('saliency IoU vs unmodified (thr 0.5)')
        ax.grid(alpha=0.3)
    axes[1].invert_xaxis()   # fewer GFLOPs to the right, as more speed is in the left panel
    axes[0].legend(fontsize=7, ncol=2)
    family = ' (solid: ' + ', '.join(ours) + '; dashed: peers)' if ours else ''
    axes[0].set_title(f'ringed: Pareto front of each curve{family}', fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
