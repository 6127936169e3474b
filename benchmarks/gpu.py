"""One-shot speed run on one CUDA device: timm ViTs (eager and torch.compile) and the two flagship
dense backbones, unmodified against Token Transforming and ToMe, float16 and bfloat16 autocast.

    .venv/bin/python benchmarks/gpu.py                     # CUDA device 0, at most 8 minutes
    .venv/bin/python benchmarks/gpu.py --device cpu --small  # the same code at tiny sizes, seconds

Random weights (speed does not depend on them). A case is one model, mode, dtype and batch: its
variants are timed after a warm-up (which compiles, in the compiled mode) in interleaved rounds
(CUDA events on a GPU, ``time.perf_counter`` on the CPU); the median is kept and speed-ups are
ratios against the same case's unmodified model. Every eager case runs first, then the compiled
ones, bfloat16 at the large batch of every model before the rest (see :func:`plan`). A progress
line per case goes to stderr. The run keeps to ``--max-minutes`` (8): a case is started only while
the time spent plus the longest case so far of that model and mode (else of that mode, else of
any) fits, and the others are listed under ``skipped`` with the reason. Writes
``benchmarks/results/gpu_<device>.json`` after every case and prints a table.
"""
import argparse
import copy
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtt.tools._provenance import describe_device, provenance  # noqa: E402
from mmtt.tools._timing import allow_recompiles, autocast, time_once  # noqa: E402

KEEP = 0.7
TIMM_VARIANTS = {   # name -> apply_patch options (None: unmodified)
    'unmodified': None,
    'paper': dict(preset='paper'),
    'fast': dict(preset='fast'),
    'tome': dict(method='tome', metric='hidden'),
}
TIMM_MODELS = {   # name -> (timm name, create_model options, image side); --small: tiny sizes
    'vit_s16_224': ('vit_small_patch16_224', {}, 224),
    'vit_b16_224': ('vit_base_patch16_224', {}, 224),
    'vit_l16_384': ('vit_large_patch16_384', {}, 384),
}
TINY_TIMM = dict(depth=4, embed_dim=64, num_heads=2)
CONFIGS = {   # name -> (config, input (H, W), tiny backbone overrides, tiny input)
    'segmenter_l_640': ('configs/segmenter_tt_ade20k.py', (640, 640),
                        dict(img_size=(64, 64), embed_dims=64, num_layers=4, num_heads=2, out_indices=(3,),
                             reduce_layers=(1, 2)), (64, 64)),
    'swin_l_800x1333': ('configs/dino_tt_swin-l_coco.py', (800, 1333),
                        dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
                             reduce_layers=[1, 2, 4], reduced_window_size=5, pretrain_img_size=96),
                        (96, 128)),
}
DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type
    return re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')


def build_timm(name: str, options: Optional[dict], small: bool) -> torch.nn.Module:
    import timm

    from mmtt.hosts.timm import apply_patch
    timm_name, kwargs, side = TIMM_MODELS[name]
    kwargs = dict(kwargs, **TINY_TIMM, img_size=32) if small else kwargs
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs).eval()
    if options is not None:
        depth = len(model.blocks)   # reduce after blocks at 1/4, 1/2 and 3/4 of the depth
        apply_patch(model, keep_ratio=KEEP, reduce_layers=tuple(depth * i // 4 - 1 for i in (1, 2, 3)),
                    **options)
    return model


def build_backbone(name: str, reduced: bool, small: bool) -> torch.nn.Module:
    """The config's backbone, as ``tools/benchmark.py --part backbone`` builds it."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmtt.analysis import unmodified
    config, _, tiny, _ = CONFIGS[name]
    cfg = Config.fromfile(str(REPO / config))
    if not reduced:
        cfg = unmodified(cfg)
    backbone = copy.deepcopy(cfg.model.backbone)
    backbone.pop('init_cfg', None)
    if small:
        backbone.update(tiny)
        if not reduced:
            backbone.reduce_layers = []
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    torch.manual_seed(0)
    model = MODELS.build(backbone)
    model.eval()   # not chained: mmdet's SwinTransformer.train() returns None
    return model


def timed_rounds(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int,
                 rounds: int) -> Dict[str, float]:
    """Median seconds of each fn, timed in interleaved rounds after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(time_once(fn, device))
    return {key: statistics.median(t) for key, t in times.items()}


def forward(model: Callable, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
    def run():
        with torch.no_grad(), autocast(device, dtype):
            return model(x)
    return run


def forward_of(model: torch.nn.Module, mode: str, backend: str) -> Callable:
    """What is timed: ``forward_features`` (timm) or ``forward``, compiled in the compiled mode
    (static shapes: one graph per variant, dtype and batch)."""
    fn = getattr(model, 'forward_features', model)
    return torch.compile(fn, backend=backend, dynamic=False) if mode == 'compiled' else fn


def measure_case(nets: Dict[str, Callable], shape, dtype_name: str, batch: int, mode: str, args,
                 device: torch.device) -> List[dict]:
    """Rows ``{variant, dtype, batch, mode, seconds, speedup}`` of one case, every variant timed
    in the same interleaved rounds."""
    x = torch.randn(batch, 3, *shape, device=device)
    dtype = DTYPES[dtype_name]
    seconds = timed_rounds({key: forward(net, x, device, dtype) for key, net in nets.items()},
                           device, args.warmup, args.rounds)
    return [dict(variant=key, dtype=dtype_name, batch=batch, mode=mode, seconds=s,
                 speedup=seconds['unmodified'] / s) for key, s in seconds.items()]


def plan(names: List[str], batches: List[int]) -> List[tuple]:
    """Cases ``(mode, model, dtype, batch)``: every eager case in the order of ``names``, then the
    compiled ones (timm models): bfloat16 at the large batch of each model first, so a run cut
    short by its budget still has a compiled figure of every model, then the others."""
    cases = [('eager', name, d, b) for name in names for d in DTYPES for b in batches]
    compiled = [name for name in names if name in TIMM_MODELS]
    first = [('compiled', name, 'bfloat16', max(batches)) for name in compiled]
    return cases + first + [('compiled', name, d, b) for name in compiled for d in DTYPES for b in batches
                            if ('compiled', name, d, b) not in first]


def build_models(name: str, small: bool, device: torch.device) -> Dict[str, torch.nn.Module]:
    if name in TIMM_MODELS:
        return {key: build_timm(name, options, small).to(device) for key, options in TIMM_VARIANTS.items()}
    return {'unmodified': build_backbone(name, False, small).to(device),
            'config': build_backbone(name, True, small).to(device)}


def input_shape(name: str, small: bool) -> tuple:
    if name in TIMM_MODELS:
        side = 32 if small else TIMM_MODELS[name][2]
        return side, side
    return CONFIGS[name][3] if small else CONFIGS[name][1]


def clock(seconds: float) -> str:
    return f'{int(seconds) // 60}:{int(seconds) % 60:02d}'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help="'cuda', 'cuda:1' or 'cpu' (default: cuda)")
    parser.add_argument('--small', action='store_true',
                        help='tiny models and inputs, batch 2, one round, eager compile backend (a check)')
    parser.add_argument('--models', nargs='+', choices=[*TIMM_MODELS, *CONFIGS],
                        help='a subset of the models (default: all)')
    parser.add_argument('--rounds', type=int, help='interleaved timing rounds (default 5; --small 1)')
    parser.add_argument('--warmup', type=int, help='untimed calls per configuration first (default 3; --small 1)')
    parser.add_argument('--batch', type=int, help='the large batch (default 64; --small 2)')
    parser.add_argument('--backend', help="torch.compile backend (default 'inductor'; --small 'eager')")
    parser.add_argument('--max-minutes', type=float, default=8.0,
                        help='time budget of the whole run; cases that would overrun it are skipped '
                             'and listed in the JSON (default 8; 0: no budget)')
    parser.add_argument('--json', help='output (default benchmarks/results/gpu_<device>.json)')
    args = parser.parse_args(argv)
    if args.max_minutes < 0:
        parser.error(f'--max-minutes {args.max_minutes} must be >= 0 (0: no budget)')
    small = args.small
    args.rounds = args.rounds or (1 if small else 5)
    args.warmup = args.warmup or (1 if small else 3)
    args.batch = args.batch or (2 if small else 64)
    args.backend = args.backend or ('eager' if small else 'inductor')
    return args


def table(results: dict) -> str:
    lines = ['| model | variant | dtype | batch | mode | ms | speed-up |', '|---|---|---|---|---|---|---|']
    for name, entry in results['models'].items():
        for r in entry['rows']:
            lines.append(f"| {name} | {r['variant']} | {r['dtype']} | {r['batch']} | {r['mode']} | "
                         f"{r['seconds'] * 1e3:.2f} | x{r['speedup']:.2f} |")
    for case in results['skipped']:
        lines.append(f"| {case['model']} | skipped: {case['reason']} | {case['dtype']} | {case['batch']} | "
                     f"{case['mode']} | - | - |")
    return '\n'.join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('benchmarks/gpu.py: no CUDA device here; pass --device cpu (with --small for a quick check)')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    names = args.models or [*TIMM_MODELS, *CONFIGS]
    batches = sorted({1, args.batch})
    start = time.perf_counter()
    budget = args.max_minutes * 60
    results = dict(provenance=provenance(device, ' '.join(DTYPES)), device=describe_device(device),
                   small=args.small, keep_ratio=KEEP, backend=args.backend, rounds=args.rounds,
                   warmup=args.warmup, batches=batches, max_minutes=args.max_minutes, models={}, skipped=[])
    for name in names:
        variants = list(TIMM_VARIANTS) if name in TIMM_MODELS else ['unmodified', 'config']
        results['models'][name] = dict(shape=list(input_shape(name, args.small)), variants=variants,
                                       modes=['eager', 'compiled'] if name in TIMM_MODELS else ['eager'],
                                       rows=[], seconds_total=0.0)
    out = Path(args.json or REPO / 'benchmarks' / 'results' / f'gpu_{device_slug(device)}.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = plan(names, batches)
    longest: Dict[object, float] = {}   # (model, mode), mode and None (any) -> the longest case so far
    current, nets = None, {}
    for i, (mode, name, dtype_name, batch) in enumerate(cases, 1):
        spent = time.perf_counter() - start
        estimate = longest.get((name, mode)) or longest.get(mode) or longest.get(None, 0.0)
        head = f'[{i}/{len(cases)} {clock(spent)}] {name} {mode} {dtype_name} batch {batch}'
        if budget and spent + estimate > budget:
            reason = (f'the {args.max_minutes:g}-minute budget is spent' if spent >= budget else
                      f'the {args.max_minutes:g}-minute budget: {spent / 60:.1f} min spent, '
                      f'the case takes about {estimate / 60:.1f} min')
            results['skipped'].append(dict(model=name, mode=mode, dtype=dtype_name, batch=batch, reason=reason))
            print(f'{head}: skipped ({reason})', file=sys.stderr)
            continue
        t0 = time.perf_counter()
        if current != (name, mode):
            nets = {}   # the previous models go before the next are built
            if mode == 'compiled':
                torch._dynamo.reset()
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            models = build_models(name, args.small, device)
            allow_recompiles(len(models) * len(DTYPES) * len(batches))
            nets = {key: forward_of(model, mode, args.backend) for key, model in models.items()}
            current = name, mode
            del models
        rows = measure_case(nets, input_shape(name, args.small), dtype_name, batch, mode, args, device)
        took = time.perf_counter() - t0
        for key in ((name, mode), mode, None):
            longest[key] = max(longest.get(key, 0.0), took)
        entry = results['models'][name]
        entry['rows'] += rows
        entry['seconds_total'] += took
        results['seconds_total'] = time.perf_counter() - start
        out.write_text(json.dumps(results, indent=1) + '\n')   # after each case: a cut-off run keeps them
        speedups = ', '.join(f"{r['variant']} x{r['speedup']:.2f}" for r in rows if r['variant'] != 'unmodified')
        print(f'{head}: {took:.1f} s ({speedups})', file=sys.stderr)
    results['seconds_total'] = time.perf_counter() - start
    out.write_text(json.dumps(results, indent=1) + '\n')
    print(table(results))
    print(f'{results["seconds_total"]:.0f} s; written to {out}')
    return results


if __name__ == '__main__':
    main()
