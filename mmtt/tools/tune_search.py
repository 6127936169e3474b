"""The tuner's search, as plain functions of measured numbers: which points to try, in which
order to measure their agreement, which ones need no measuring, the front, and the choice.

A point is a dict with at least ``family`` (points differing only in how much they keep),
``keep_ratio``, ``speedup`` and, once measured, ``agreement`` (the task's headline figure).

Pruning assumes what every measured front in ``docs/benchmarks.md`` shows: within a family,
keeping fewer tokens never makes the reduced model agree more with the unmodified one. So a
point's agreement is at most that of its family's measured points keeping more, and a point is
not measured when

- it is not faster than the unmodified model (which agrees fully: it dominates the point);
- ``--target-agreement`` is set and its family already fell below it at a higher keep ratio;
- a measured point at least as fast already agrees at least as much as the point can.
"""
from typing import Dict, List, Optional, Sequence, Tuple

UNMODIFIED = 'unmodified'


def spread_layers(depth: int, count: int) -> Tuple[int, ...]:
    """``count`` reductions spread from a quarter to three quarters of ``depth`` blocks: the
    paper's (3, 6, 9) of 12 for three, (6, 12, 18) of 24; one reduction after a quarter."""
    if count == 1:
        return (max(depth // 4, 0),)
    lo, hi = depth / 4, 3 * depth / 4
    found = {min(max(int(round(lo + i * (hi - lo) / (count - 1))), 0), depth - 1) for i in range(count)}
    return tuple(sorted(found))


def keep_windows(keep_ratios: Sequence[float], window: int) -> List[int]:
    """Swin: the reduced window sides nearest to each keep ratio (``(side / window) ** 2``),
    in ``[2, window - 1]``, largest first, each once."""
    sides = {min(max(int(round(window * k ** 0.5)), 2), window - 1) for k in keep_ratios}
    return sorted(sides, reverse=True)


def upper_bound(point: dict, points: Sequence[dict]) -> Tuple[float, Optional[dict]]:
    """The most ``point`` can agree: the least agreement among the measured points of its family
    keeping more (1 and None when there is none), and that point."""
    above = [p for p in points if p['family'] == point['family'] and p['keep_ratio'] > point['keep_ratio']
             and p.get('agreement') is not None]
    if not above:
        return 1.0, None
    worst = min(above, key=lambda p: p['agreement'])
    return worst['agreement'], worst


def prune_reason(point: dict, points: Sequence[dict], target_agreement: Optional[float]) -> Optional[str]:
    """Why ``point`` needs no measuring given the measured ``points``, or None (measure it)."""
    if point['speedup'] <= 1.0:
        return f'not faster than the unmodified model (x{point["speedup"]:.2f})'
    bound, source = upper_bound(point, points)
    if target_agreement is not None and source is not None and bound < target_agreement:
        return f'{source["label"]} already agrees less than the target ({bound:.3f})'
    for other in points:
        if other is point or other.get('agreement') is None:
            continue
        if other['speedup'] >= point['speedup'] and other['agreement'] >= bound:
            return f'dominated by {other["label"]} (x{other["speedup"]:.2f}, {other["agreement"]:.3f})'
    return None


def measure_order(points: Sequence[dict], target_speedup: Optional[float]) -> List[dict]:
    """The order to measure agreement in: points that can be chosen first (at least
    ``target_speedup`` fast), then by keep ratio from the highest (so each family's bound is
    known before its lower keeps), then the fastest first."""
    def key(p: dict):
        chosen_later = target_speedup is not None and p['speedup'] < target_speedup
        return chosen_later, -p['keep_ratio'], -p['speedup']
    return sorted(points, key=key)


def pareto_front(points: Sequence[dict]) -> List[dict]:
    """The measured points no other one beats in both speed-up and agreement, fastest last."""
    measured = [p for p in points if p.get('agreement') is not None]
    front = [p for p in measured
             if not any(o['speedup'] >= p['speedup'] and o['agreement'] >= p['agreement']
                        and (o['speedup'] > p['speedup'] or o['agreement'] > p['agreement'])
                        for o in measured)]
    return sorted(front, key=lambda p: (p['speedup'], -p['agreement']))


def choose(points: Sequence[dict], target_speedup: Optional[float], target_agreement: Optional[float],
           metric: str) -> Tuple[Optional[dict], str]:
    """``(point, why)``: the most faithful reduced point at least ``target_speedup`` fast, or
    the fastest one agreeing at least ``target_agreement``; None and a sentence naming the best
    reached when no point meets the target."""
    reduced = [p for p in points if p.get('agreement') is not None and p['label'] != UNMODIFIED]
    if not reduced:
        timed = [p for p in points if p['label'] != UNMODIFIED and 'speedup' in p]
        if not timed:
            return None, 'no reduced point was timed'
        best = max(timed, key=lambda p: p['speedup'])
        return None, (f'no reduced point was worth measuring: the fastest, {best["label"]}, runs at '
                      f'x{best["speedup"]:.2f} ({best.get("reason", best["status"])})')
    if target_speedup is not None:
        fast = [p for p in reduced if p['speedup'] >= target_speedup]
        if not fast:
            best = max(reduced, key=lambda p: p['speedup'])
            return None, (f'no measured point reaches --target-speedup {target_speedup:g}: the fastest '
                          f'is {best["label"]} at x{best["speedup"]:.2f} ({metric} {best["agreement"]:.3f})')
        return max(fast, key=lambda p: (p['agreement'], p['speedup'])), 'most faithful at the target speed'
    faithful = [p for p in reduced if p['agreement'] >= target_agreement]
    if not faithful:
        best = max(reduced, key=lambda p: p['agreement'])
        return None, (f'no measured point reaches --target-agreement {target_agreement:g}: the most '
                      f'faithful is {best["label"]} with {metric} {best["agreement"]:.3f} '
                      f'(x{best["speedup"]:.2f})')
    return max(faithful, key=lambda p: (p['speedup'], p['agreement'])), 'fastest at the target agreement'


def summary(points: Sequence[dict]) -> Dict[str, int]:
    """How many points ended in each status."""
    counts: Dict[str, int] = {}
    for p in points:
        counts[p['status']] = counts.get(p['status'], 0) + 1
    return counts
