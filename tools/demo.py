"""mmtt demo: Token Transforming on a timm ViT, what it did and what it saved.

Runs offline on random weights (no checkpoint download): it shows the token schedule,
GFLOPs counted by MMEngine's counter, and the measured latency, with and without mmtt.
"""
import argparse
import time

import timm
import torch

from mmtt.analysis import count_flops
from mmtt.patch.timm import apply_patch, remove_patch


def median_latency(model, x, repeats: int) -> float:
    with torch.no_grad():
        model(x)   # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def token_counts(model, x):
    """Tokens entering each block, recorded by forward pre-hooks."""
    counts = []
    hooks = [b.register_forward_pre_hook(lambda m, args: counts.append(args[0].shape[1]))
             for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--model', default='deit_small_patch16_224')
    parser.add_argument('--method', default='transform', choices=['transform', 'tome', 'evit', 'prune'])
    parser.add_argument('--keep-ratio', type=float, default=0.7)
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(args.batch, 3, *model.patch_embed.img_size)
    full_tokens = token_counts(model, x)
    full = count_flops(model, x[:1])
    full_time = median_latency(model, x, args.repeats)

    apply_patch(model, method=args.method, keep_ratio=args.keep_ratio, layers=args.layers)
    reduced_tokens = token_counts(model, x)
    reduced = count_flops(model, x[:1])
    reduced_time = median_latency(model, x, args.repeats)
    remove_patch(model)

    print(f'{args.model} (random weights), method={args.method}, keep_ratio={args.keep_ratio}, '
          f'reduce after blocks {args.layers} (0-based)')
    print('tokens entering each block:')
    print('  unmodified:', full_tokens)
    print('  mmtt:      ', reduced_tokens)
    print(f'GFLOPs per image: {full.gflops:.2f} -> {reduced.gflops:.2f} '
          f'({100 * (1 - reduced.total / full.total):.1f}% fewer, compression ops included)')
    print(f'latency, batch {args.batch}, median of {args.repeats} on {torch.get_num_threads()} CPU '
          f'threads: {full_time * 1e3:.0f} ms -> {reduced_time * 1e3:.0f} ms '
          f'(x{full_time / reduced_time:.2f})')
    print('ops seen but not counted (element-wise, by convention):',
          ', '.join(sorted(set(reduced.uncounted) | set(full.uncounted))))


if __name__ == '__main__':
    main()
