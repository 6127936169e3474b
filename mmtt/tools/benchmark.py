"""Speed of mmtt against the unmodified model: GFLOPs, latency, throughput, peak memory.

    python tools/benchmark.py --model deit_base_patch16_224 --methods transform tome prune
    python tools/benchmark.py --config configs/segmenter/segmenter_tt_ade20k.py --repeats 3

All variants (the unmodified model first) are built in one process and timed in interleaved
rounds: each round times a batch-1 forward and a ``--batch`` forward of every variant, so a drift
of the machine's speed reaches all of them alike. Latency is the median over ``--repeats``
rounds after ``--warmup`` untimed forwards of each (CUDA events on a GPU); throughput is images/s
at ``--batch``. Ratios are against the unmodified model of the same run. Peak memory is then
measured per variant in a fresh process (one ``--batch`` forward): on the CPU the process's peak
RSS (weights and libraries included), on a GPU ``torch.cuda.max_memory_allocated``.

``--dtype bfloat16|float16`` runs every forward under ``torch.autocast``. ``--compile`` times
``torch.compile`` of the measured forward, for the unmodified model and every reduced one alike:
each forward is called once untimed to compile it (one graph per variant and batch size), then
``--warmup`` times; the peak-memory process compiles and then measures a second forward (on the
CPU its resident set then includes what the compiler kept).
"""
import argparse
import json
import multiprocessing as mp
import queue as queues
import resource
import statistics
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from tqdm import tqdm

from mmtt.modules.methods import METHODS  # the table of methods

from ._cli import ToolError, exits_on_user_error, one_line
from ._provenance import provenance
from ._timing import (
    DTYPES,
    add_compile_arguments,
    autocast,
    check_compile_arguments,
    compile_forward,
    compile_settings,
    time_once,
)


def timed(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()``."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        return statistics.median(time_once(fn, device) for _ in range(repeats))


def build_timm(args, method: Optional[str],
               top_k: Optional[int] = None) -> Tuple[torch.nn.Module, Tuple[int, int]]:
    import timm

    from mmtt.hosts.timm import apply_patch
    kwargs = dict(img_size=args.img_size) if args.img_size else {}
    model = timm.create_model(args.model, pretrained=False, **kwargs).eval()
    if method is not None:
        extra = {} if top_k is None else dict(top_k=top_k)
        apply_patch(model, method=method, keep_ratio=args.keep_ratio, layers=args.layers, **extra)
    return model, tuple(model.patch_embed.img_size)


SDPA_BASELINE = 'unmodified+SDPA'


def use_fused_attention(backbone: torch.nn.Module) -> None:
    """Run every attention of an mmtt mmseg ViT through SDPA, as a reduced one does: the
    unmodified model's outputs with the kernel the reduced model uses (mmseg's own
    ``nn.MultiheadAttention`` path materialises the N x N map)."""
    from mmtt.hosts.mmseg import TokenVisionTransformer
    if not isinstance(backbone, TokenVisionTransformer):
        raise ValueError(f'--sdpa-baseline needs an mmtt mmseg ViT backbone, got {type(backbone).__name__}')
    backbone.use_fused_attention()


def build_config(args, method: Optional[str],
                 top_k: Optional[int] = None) -> Tuple[torch.nn.Module, Tuple[int, int]]:
    from mmengine.config import Config

    from mmtt.analysis import build_model, default_shape, tensor_forward, unmodified
    cfg = Config.fromfile(args.config)
    if method in (None, SDPA_BASELINE):
        cfg = unmodified(cfg)
    elif method != 'config':
        cfg.model.backbone.token_transform.method = method
    if top_k is not None:
        cfg.model.backbone.token_transform.top_k = top_k
    model = build_model(cfg)
    if method == SDPA_BASELINE:
        use_fused_attention(model.backbone)
    net = model.backbone if args.part == 'backbone' else tensor_forward(model)
    return net, tuple(args.shape or default_shape(cfg))


def build_variant(args, method: Optional[str], top_k: Optional[int] = None) -> Tuple[torch.nn.Module, Tuple[int, int]]:
    """One variant's network in eval mode on ``args.device`` (method None: the unmodified model)."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, shape = (build_config if args.config else build_timm)(args, method, top_k)
    model = model.to(torch.device(args.device))
    model.eval()   # not chained: mmdet's SwinTransformer.train() returns None
    return model, shape


def variant_name(method: Optional[str], top_k: Optional[int]) -> str:
    return (method or 'unmodified') + ('' if top_k is None else f' k={top_k}')


def peak_memory_mb(args, method: Optional[str], top_k: Optional[int] = None) -> float:
    """Peak memory of building the variant and running one forward at ``--batch`` (call it in a
    fresh process: the process's peak RSS on a CPU, ``max_memory_allocated`` on a GPU)."""
    model, shape = build_variant(args, method, top_k)
    device = torch.device(args.device)
    batch = torch.randn(args.batch, 3, *shape, device=device)
    with torch.no_grad(), autocast(device, DTYPES[args.dtype]):
        if args.compile:
            model = compile_forward(model, args, entries=2)
            model(batch)   # compiles
            reset_peak_memory(device)
        elif device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        model(batch)
    return (torch.cuda.max_memory_allocated() if device.type == 'cuda' else peak_rss()) / 2 ** 20


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak anew from what is held now (Linux's ``clear_refs`` resets ``VmHWM``)."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def peak_rss() -> int:
    """Bytes: this process's peak resident set. Linux's ``VmHWM`` is its own address space's
    (``ru_maxrss`` would carry the parent's peak across fork and exec, so a child of a parent
    holding models would report the parent's)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(args, method, top_k, queue) -> None:
    try:
        queue.put(('ok', peak_memory_mb(args, method, top_k)))
    except BaseException as err:   # reported by the parent, which would otherwise wait forever
        queue.put(('error', f'{type(err).__name__}: {one_line(err)}'))


def peak_memory_in_fresh_process(args, method: Optional[str], top_k: Optional[int] = None) -> float:
    """:func:`peak_memory_mb` in a spawned process; its error (or its death) raises
    :class:`ToolError`."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(args, method, top_k, queue))
    proc.start()
    reply = None
    while reply is None:
        try:
            reply = queue.get(timeout=1.0)
        except queues.Empty:
            if not proc.is_alive():   # killed or crashed before it could report
                try:
                    reply = queue.get(timeout=1.0)
                except queues.Empty:
                    reply = ('error', f'the process died with exit code {proc.exitcode}')
    proc.join()
    status, result = reply
    if status != 'ok':
        raise ToolError(f'variant {variant_name(method, top_k)!r} failed: {result}')
    return result


def measure(args, variants: List[Tuple[Optional[str], Optional[int]]]) -> List[dict]:
    """GFLOPs of each variant, then batch-1 latency and batch time in interleaved rounds (each
    round times every variant once, so a drift of the machine's speed reaches all alike);
    medians over ``--repeats`` rounds after ``--warmup`` untimed forwards of each (with
    ``--compile``, one more first: the compiling one)."""
    from mmtt.analysis import count_flops
    device = torch.device(args.device)
    nets, flops = [], []
    for method, top_k in tqdm(variants, desc='build'):
        try:
            net, shape = build_variant(args, method, top_k)
        except (ValueError, TypeError, KeyError) as err:
            raise ToolError(f'variant {variant_name(method, top_k)!r} failed: {one_line(err)}') from err
        flops.append(count_flops(net, (torch.randn(1, 3, *shape, device=device),)))
        nets.append(net)
    if args.compile:   # one graph per variant and batch size
        nets = [compile_forward(net, args, entries=2 * len(nets)) for net in nets]
    one = torch.randn(1, 3, *shape, device=device)
    batch = torch.randn(args.batch, 3, *shape, device=device)
    latency: List[List[float]] = [[] for _ in nets]
    batch_time: List[List[float]] = [[] for _ in nets]
    with torch.no_grad(), autocast(device, DTYPES[args.dtype]):
        for net in tqdm(nets, desc='compile' if args.compile else 'warm-up'):
            for _ in range(args.warmup + args.compile):
                net(one)
                net(batch)
        for _ in tqdm(range(args.repeats), desc='rounds'):
            for i, net in enumerate(nets):
                latency[i].append(time_once(lambda: net(one), device))
                batch_time[i].append(time_once(lambda: net(batch), device))
    return [dict(method=variant_name(method, top_k), gflops=f.gflops,
                 compression_gflops=f.compression / 1e9,
                 latency_ms=statistics.median(lat) * 1e3, latency_ms_rounds=[t * 1e3 for t in lat],
                 throughput=args.batch / statistics.median(bt), uncounted_ops=sorted(f.uncounted))
            for (method, top_k), f, lat, bt in zip(variants, flops, latency, batch_time)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--model', help='timm model name (random weights: speed does not need them)')
    source.add_argument('--config', help='mmseg/mmdet config using an mmtt backbone')
    parser.add_argument('--methods', nargs='+', default=None,
                        help=f'reduction methods side by side, from {METHODS}; default: transform '
                             '(timm) or the config\'s own method')
    parser.add_argument('--keep-ratio', type=float, default=0.7, help='timm models')
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9], help='timm models, 0-based')
    parser.add_argument('--img-size', type=int, default=None, help='timm models')
    parser.add_argument('--shape', type=int, nargs=2, default=None, help='configs: input H W')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model',
                        help='configs: time the whole model or its backbone alone')
    parser.add_argument('--top-k', type=int, nargs='+', default=None,
                        help='also run Token Transforming with W kept to K non-zeros per column '
                             '(TokenTransform top_k), one variant per K')
    parser.add_argument('--sdpa-baseline', action='store_true',
                        help='configs with an mmseg ViT backbone: also time the unmodified model '
                             'with fused SDPA attention in every layer (a kernel-matched baseline)')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch\'s)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default='float32',
                        help='bfloat16/float16: every forward under torch.autocast')
    add_compile_arguments(parser)
    parser.add_argument('--json', help='write every figure to this file')
    args = parser.parse_args(argv)
    check_compile_arguments(parser, args)
    if not 0 < args.keep_ratio <= 1:
        parser.error(f'--keep-ratio {args.keep_ratio} must be in (0, 1]')
    negative = [i for i in args.layers if i < 0]
    if negative:
        parser.error(f'--layers {negative}: block indices are 0-based, >= 0')
    for flag, value, low in (('--img-size', args.img_size, 1), ('--batch', args.batch, 1),
                             ('--warmup', args.warmup, 0), ('--repeats', args.repeats, 1),
                             ('--threads', args.threads, 1)):
        if value is not None and value < low:
            parser.error(f'{flag} {value} must be >= {low}')
    if args.shape is not None and min(args.shape) < 1:
        parser.error(f'--shape {" ".join(map(str, args.shape))}: H and W must be >= 1')
    if args.model is not None:
        import timm
        if not timm.is_model(args.model):
            parser.error(f'--model {args.model}: not a timm model name (see timm.list_models())')
    for m in args.methods or []:
        if m not in METHODS:
            parser.error(f'unknown method {m!r}; choose from {METHODS}')
    if args.sdpa_baseline and not args.config:
        parser.error('--sdpa-baseline needs --config (timm models already use SDPA)')
    for k in args.top_k or []:
        if k < 1:
            parser.error(f'--top-k {k} must be >= 1')
    return args


def describe_hardware(device: str, threads: Optional[int] = None) -> str:
    if device.startswith('cuda'):
        return torch.cuda.get_device_name()
    import platform
    return f'{platform.processor() or platform.machine()} CPU, {threads or torch.get_num_threads()} threads'


def describe_run(args: argparse.Namespace) -> str:
    """``'float32, eager'`` or ``'bfloat16, compiled (default, inductor)'``."""
    how = f'compiled ({args.compile_mode}, {args.compile_backend})' if args.compile else 'eager'
    return f'{args.dtype}, {how}'


@exits_on_user_error
def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    methods = args.methods or (['config'] if args.config else ['transform'])
    # Each --top-k adds a variant of the transform (timm) or of the config's own method.
    sparse = [('transform' if args.model else 'config', k) for k in args.top_k or []]
    baseline = [(SDPA_BASELINE, None)] if args.sdpa_baseline else []
    variants = [(None, None)] + baseline + [(m, None) for m in methods] + sparse
    results = measure(args, variants)
    for r, (method, top_k) in zip(results, tqdm(variants, desc='peak memory')):
        r['peak_mem_mb'] = peak_memory_in_fresh_process(args, method, top_k)
    base = results[0]
    for r in results:
        r['gflops_ratio'] = base['gflops'] / r['gflops']
        r['latency_ratio'] = base['latency_ms'] / r['latency_ms']
        r['throughput_ratio'] = r['throughput'] / base['throughput']
    target = args.model or f'{args.config} ({"backbone alone" if args.part == "backbone" else "whole model"})'
    print(f'\n{target} on {describe_hardware(args.device, args.threads)}, {describe_run(args)}, '
          f'batch {args.batch} for throughput, median of {args.repeats}')
    print(f'{"method":<16}{"GFLOPs":>9}{"x":>7}{"ops %":>7}{"latency ms":>12}{"x":>7}{"img/s":>9}'
          f'{"x":>7}{"peak MB":>9}')
    for r in results:
        print(f'{r["method"]:<16}{r["gflops"]:>9.2f}{r["gflops_ratio"]:>7.2f}'
              f'{100 * r["compression_gflops"] / r["gflops"]:>7.2f}{r["latency_ms"]:>12.1f}'
              f'{r["latency_ratio"]:>7.2f}{r["throughput"]:>9.2f}{r["throughput_ratio"]:>7.2f}'
              f'{r["peak_mem_mb"]:>9.0f}')
    print('"ops %": share of the GFLOPs spent in the reduction modules themselves')
    if args.sdpa_baseline:
        fused = results[1]
        print(f'against {SDPA_BASELINE} (same kernel, the reduction alone):')
        for r in results[2:]:
            r['latency_ratio_vs_sdpa'] = fused['latency_ms'] / r['latency_ms']
            r['throughput_ratio_vs_sdpa'] = r['throughput'] / fused['throughput']
            print(f'  {r["method"]:<16} latency x{r["latency_ratio_vs_sdpa"]:.2f}, '
                  f'throughput x{r["throughput_ratio_vs_sdpa"]:.2f}, '
                  f'GFLOPs x{fused["gflops"] / r["gflops"]:.2f}')
    print('not counted in GFLOPs (element-wise by convention):',
          ', '.join(sorted({op for r in results for op in r['uncounted_ops']})))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(target=target, hardware=describe_hardware(args.device, args.threads),
                           provenance=provenance(args.device, args.dtype), dtype=args.dtype,
                           **compile_settings(args), args=vars(args), results=results),
                      f, indent=2)
    return results


if __name__ == '__main__':
    main()
