"""Timing shared by the speed tools (benchmark, pareto, reduction_cost)."""
import argparse
import time
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (CUDA events on a GPU, so queued work is counted)."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    if device.type != 'cpu':
        getattr(torch, device.type).synchronize()
    return time.perf_counter() - t0


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Reduced precision for forwards; float32 runs as is."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compile``, ``--compile-mode`` and ``--compile-backend`` (check them with
    :func:`check_compile_arguments`)."""
    parser.add_argument('--compile', action='store_true',
                        help='time torch.compile of the measured forward, for the unmodified model and '
                             'every reduced one alike (the warm-up compiles)')
    parser.add_argument('--compile-mode', choices=COMPILE_MODES, default=None,
                        help="with --compile: torch.compile's mode (default: 'default')")
    parser.add_argument('--compile-backend', default=None,
                        help="with --compile: torch.compile's backend (default 'inductor'; 'eager' or "
                             "'aot_eager' trace without generating code, a quick check)")


def check_compile_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line, a compile option without ``--compile`` or an unknown backend; fill
    in the defaults."""
    for flag in ('compile_mode', 'compile_backend'):
        if getattr(args, flag) is not None and not args.compile:
            parser.error(f'--{flag.replace("_", "-")} needs --compile')
    if not args.compile:
        return
    args.compile_mode = args.compile_mode or 'default'
    args.compile_backend = args.compile_backend or 'inductor'
    import torch._dynamo
    backends = torch._dynamo.list_backends(exclude_tags=())
    if args.compile_backend not in backends:
        parser.error(f'--compile-backend {args.compile_backend!r}: not a torch.compile backend; '
                     f'choose from {", ".join(backends)}')
    if args.compile_mode != 'default' and args.compile_backend != 'inductor':
        parser.error(f'--compile-mode {args.compile_mode} needs the inductor backend, '
                     f'not {args.compile_backend!r}')


def compile_settings(args: argparse.Namespace) -> dict:
    """What a result records of the compilation: ``compile`` and, when true, its mode and backend."""
    if not args.compile:
        return dict(compile=False)
    return dict(compile=True, compile_mode=args.compile_mode, compile_backend=args.compile_backend)


def allow_recompiles(entries: int) -> None:
    """Let one function hold ``entries`` compiled graphs (one per variant, input shape and dtype).
    Past dynamo's limit (8 per function) it would run the rest eagerly and a 'compiled' timing
    would be an eager one: a run that still needs more fails instead."""
    import torch._dynamo.config as config
    config.recompile_limit = max(config.recompile_limit, entries)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * entries)
    config.fail_on_recompile_limit_hit = True


def compile_forward(fn: Callable, args: argparse.Namespace, entries: int) -> Callable:
    """``torch.compile(fn)`` as ``args`` asks (static shapes: every batch size is its own graph,
    as a deployed model sees one), with room for ``entries`` graphs (:func:`allow_recompiles`)."""
    allow_recompiles(entries)
    options = dict(backend=args.compile_backend, dynamic=False)
    if args.compile_mode != 'default':
        options['mode'] = args.compile_mode
    return torch.compile(fn, **options)
