"""Visual tokens, LLM input length and vision-encoder GFLOPs of LLaVA-1.5 with token reduction.

    python -m mmtt.tools.llava_tokens --schedule llava-1.5/32 --text-tokens 40
    python -m mmtt.tools.llava_tokens --config ~/llava-1.5-7b-hf --keep-ratio 0.63 --reduce-layers 6 12 18
    python -m mmtt.tools.llava_tokens --benchmark --rounds 5 --lm-layers 2

Nothing is downloaded and no weights are read: the model is built from its config (LLaVA-1.5-7B's
shapes built in, or ``--config``, a local llava-hf checkpoint directory) with random weights,
which is all that token counts, FLOPs and timings depend on. The vision tower's GFLOPs are
counted by :func:`mmtt.analysis.count_flops` (a multiply-add is one FLOP); the projector's and
the language model's prefill are computed from their shapes in the same convention.

``--benchmark`` times, on this machine's CPU, the vision tower (CLIP ViT-L/14 at 336 px), the
prefill of a language model of LLaVA-7B's width cut to ``--lm-layers`` layers, and the time
to first token (``generate`` with one new token) of that whole model, unmodified against
patched, in interleaved rounds (medians). Only ratios within one run mean anything; the 7B
time to first token is extrapolated from the per-layer prefill time.
"""
import argparse
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..analysis import count_flops
from ..modules import METHODS
from ._cli import ToolError, exits_on_user_error
from ._timing import time_once


def llava_15_7b_config():
    """``llava-hf/llava-1.5-7b-hf``'s config (CLIP ViT-L/14-336 tower, Vicuna-7B text model)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14,
                              projection_dim=768, hidden_act='quick_gelu')
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=32001)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                         pad_token_id=32001, vision_feature_layer=-2,
                         vision_feature_select_strategy='default')
    for c in (config, vision, text):
        c._attn_implementation = 'sdpa'
    return config


def load_config(path: Optional[str]):
    if path is None:
        return llava_15_7b_config()
    from transformers import LlavaConfig
    if not Path(path).expanduser().is_dir():
        raise ToolError(f'--config {path}: not a directory (give a local llava-hf checkpoint '
                        'directory; nothing is downloaded)')
    config = LlavaConfig.from_pretrained(str(Path(path).expanduser()), local_files_only=True)
    for c in (config, config.vision_config, config.text_config):
        c._attn_implementation = 'sdpa'
    return config


def token_schedule(model, num_patches: int) -> List[int]:
    """Patch tokens after each reducing layer of a patched LLaVA, starting from ``num_patches``."""
    from ..hosts import transformers as tp
    counts = [num_patches]
    for layer in tp._vision_root(tp._llava_tower(model)).encoder.layers:
        transform = layer.token_transform
        if transform is not None and transform.num_keep(counts[-1]) < counts[-1]:
            counts.append(transform.num_keep(counts[-1]))
    return counts


def prefill_gflops(text_config, tokens: int, logits: int = 1) -> float:
    """Multiply-adds of a LLaMA-style prefill over ``tokens`` (full attention products, as the
    SDPA handle of :func:`count_flops` counts them; logits for the last ``logits`` tokens)."""
    h, heads = text_config.hidden_size, text_config.num_attention_heads
    kv = getattr(text_config, 'num_key_value_heads', None) or heads
    d = getattr(text_config, 'head_dim', None) or h // heads
    per_token = h * heads * d * 2 + 2 * h * kv * d + 3 * h * text_config.intermediate_size
    attention = 2 * tokens * tokens * heads * d
    return (text_config.num_hidden_layers * (tokens * per_token + attention)
            + logits * h * text_config.vocab_size) / 1e9


def projector_gflops(config, tokens: int) -> float:
    v, t = config.vision_config.hidden_size, config.text_config.hidden_size
    return tokens * (v * t + t * t) / 1e9


class _Tower(nn.Module):
    """The vision tower as LLaVA calls it, as a one-tensor module for the FLOP counter."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.tower(pixel_values, output_hidden_states=True).last_hidden_state


def patch_kwargs(args: argparse.Namespace) -> dict:
    from ..hosts.transformers import VISUAL_TOKEN_METHODS
    if args.method in VISUAL_TOKEN_METHODS:   # one reduction at the feature layer
        if args.visual_tokens is not None:
            return dict(method=args.method, visual_tokens=args.visual_tokens)
        return dict(method=args.method, keep_ratio=args.keep_ratio)
    method = dict(method=args.method, kappa=args.kappa, tau=args.tau, preset=args.preset)
    if args.visual_tokens is not None:
        method['visual_tokens'] = args.visual_tokens
        if args.reduce_layers is None:
            return dict(schedule=args.schedule, **method)
    if args.reduce_layers is None:
        return dict(schedule=args.schedule or 'llava-1.5/32', **method)
    return dict(keep_ratio=args.keep_ratio, reduce_layers=tuple(args.reduce_layers), **method)


def report(config, kwargs: dict, text_tokens: int, images: int, flops: bool = True) -> Dict[str, object]:
    """Token counts (and GFLOPs) of ``config``'s LLaVA unmodified and patched with ``kwargs``."""
    from transformers import LlavaForConditionalGeneration

    from ..hosts import transformers as tp
    vision = config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    text_layers = config.text_config.num_hidden_layers
    # Counting needs the vision tower only: the language model is built with no layers.
    config.text_config.num_hidden_layers = 0
    try:
        model = LlavaForConditionalGeneration(config).eval()
    finally:
        config.text_config.num_hidden_layers = text_layers
    full = num_patches + (0 if config.vision_feature_select_strategy == 'default' else 1)
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size)
    out: Dict[str, object] = {'patches': num_patches}
    if flops:
        out['vision_gflops'] = count_flops(_Tower(tp._llava_tower(model)), (pixels,)).gflops
    tp.apply_patch(model, **kwargs)
    kept = model.visual_tokens(num_patches)
    out.update(schedule=token_schedule(model, num_patches), visual_tokens=(full, kept),
               llm_input=(text_tokens + images * full, text_tokens + images * kept))
    if flops:
        counted = count_flops(_Tower(tp._llava_tower(model)), (pixels,))
        out['vision_gflops'] = (out['vision_gflops'], counted.gflops)
        out['reduction_gflops'] = counted.compression / 1e9
    out['projector_gflops'] = tuple(projector_gflops(config, images * n) for n in (full, kept))
    out['prefill_gflops'] = tuple(prefill_gflops(config.text_config, n) for n in out['llm_input'])
    return out


def benchmark(config, kwargs: dict, text_tokens: int, rounds: int, lm_layers: int) -> Dict[str, object]:
    """Medians (s) of the vision tower, the prefill and the time to first token, unmodified
    and patched, measured in ``rounds`` interleaved rounds (order alternating)."""
    from transformers import LlavaForConditionalGeneration

    from ..hosts import transformers as tp
    text_layers = config.text_config.num_hidden_layers
    config.text_config.num_hidden_layers = lm_layers
    try:
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config).eval()
    finally:
        config.text_config.num_hidden_layers = text_layers
    model.generation_config.pad_token_id = config.pad_token_id
    vision = config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size)
    text = torch.randint(3, config.image_token_index, (text_tokens - 1,))
    ids = torch.cat([torch.tensor([1]), torch.full((num_patches,), config.image_token_index), text])[None]
    tp.apply_patch(model, **kwargs)
    kept = model.visual_tokens(num_patches)
    tp.remove_patch(model)
    embed = model.get_input_embeddings()
    embeds = {False: embed(ids).detach(), True: embed(ids[:, num_patches - kept:]).detach()}
    lm = model.model.language_model if tp.V5 else model.language_model
    tower = tp._llava_tower(model)
    head = {} if tp.V5 else dict(logits_to_keep=1)   # transformers 5: lm is the headless LlamaModel

    def step(patched: bool) -> Dict[str, float]:
        if patched:
            tp.apply_patch(model, **kwargs)
        try:
            x = embeds[patched]
            return {
                'vision': time_once(lambda: tower(pixels, output_hidden_states=True),
                                    pixels.device),
                'prefill': time_once(lambda: lm(inputs_embeds=x, use_cache=True, **head),
                                     pixels.device),
                'ttft': time_once(lambda: model.generate(input_ids=ids, pixel_values=pixels,
                                                         attention_mask=torch.ones_like(ids),
                                                         max_new_tokens=1, do_sample=False),
                                  pixels.device),
            }
        finally:
            if patched:
                tp.remove_patch(model)

    times = {False: [], True: []}
    with torch.no_grad():
        step(False), step(True)   # warm-up
        for r in range(rounds):
            for patched in ((False, True) if r % 2 == 0 else (True, False)):
                times[patched].append(step(patched))
    scale = text_layers / lm_layers
    for t in times[False] + times[True]:   # the full-depth language model: vision + every layer
        t['ttft_7b_estimate'] = t['vision'] + t['prefill'] * scale
    med = {p: {k: statistics.median(t[k] for t in times[p]) for k in times[p][0]} for p in times}
    # Each round's two measurements are neighbours in time: the median of their ratios is
    # steadier than the ratio of medians on a shared machine.
    ratios = {k: [b[k] / a[k] for a, b in zip(times[False], times[True])] for k in med[False]}
    return {'rounds': rounds, 'lm_layers': lm_layers,
            'llm_input': (ids.shape[1], ids.shape[1] - num_patches + kept),
            'unmodified': med[False], 'patched': med[True],
            'ratio': {k: statistics.median(r) for k, r in ratios.items()}, 'round_ratios': ratios}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from ..hosts.transformers import SCHEDULES, VISUAL_TOKEN_METHODS
    from ..modules.presets import PRESETS
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', help='a local llava-hf checkpoint directory (its config.json); '
                                         'default: LLaVA-1.5-7B built in')
    parser.add_argument('--schedule', choices=sorted(SCHEDULES),
                        help='default llava-1.5/32 unless --reduce-layers is given')
    parser.add_argument('--preset', choices=sorted(PRESETS),
                        help='Token Transforming setting (default: the paper\'s)')
    parser.add_argument('--method', default=None, choices=METHODS + tuple(VISUAL_TOKEN_METHODS),
                        help='default: transform; prumerge, prumerge+ and visionzip reduce the '
                             'feature layer once (no --schedule or --reduce-layers)')
    parser.add_argument('--visual-tokens', type=int, default=None,
                        help='visual tokens per image the language model receives (e.g. 64, 128, '
                             '192), instead of --keep-ratio')
    parser.add_argument('--keep-ratio', type=float, default=0.7)
    parser.add_argument('--reduce-layers', type=int, nargs='+')
    parser.add_argument('--kappa', type=float, default=None, help="default: the preset's")
    parser.add_argument('--tau', type=float, default=None, help="default: the preset's")
    parser.add_argument('--text-tokens', type=int, default=40,
                        help='prompt tokens besides the image placeholders')
    parser.add_argument('--images', type=int, default=1)
    parser.add_argument('--no-flops', action='store_true', help='token counts only')
    parser.add_argument('--benchmark', action='store_true', help='time it on this CPU (see above)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--lm-layers', type=int, default=2)
    args = parser.parse_args(argv)
    for name in ('text_tokens', 'images', 'rounds', 'lm_layers'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.schedule is not None and args.reduce_layers is not None:
        parser.error('--schedule sets --keep-ratio and --reduce-layers; give one or the other')
    return args


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    config = load_config(args.config)
    kwargs = patch_kwargs(args)
    what = ', '.join(f'{k}={v}' for k, v in kwargs.items() if v is not None)
    if args.benchmark:
        out = benchmark(config, kwargs, args.text_tokens, args.rounds, args.lm_layers)
        print(f'{what}; {out["rounds"]} interleaved rounds, medians in s; LLM input '
              f'{out["llm_input"][0]} -> {out["llm_input"][1]} tokens; language model cut to '
              f'{out["lm_layers"]} layers')
        print(f'{"":18}{"unmodified":>12}{"patched":>12}{"ratio":>8}  rounds\' ratios: min-max')
        for key in out['ratio']:
            spread = out['round_ratios'][key]
            print(f'{key:18}{out["unmodified"][key]:12.3f}{out["patched"][key]:12.3f}'
                  f'{out["ratio"][key]:8.3f}  {min(spread):.3f}-{max(spread):.3f}')
        return out
    out = report(config, kwargs, args.text_tokens, args.images, flops=not args.no_flops)
    full, kept = out['visual_tokens']
    print(f'{what}')
    print(f'patch tokens after each reduction: {" -> ".join(map(str, out["schedule"]))}')
    print(f'visual tokens per image: {full} -> {kept} ({kept / full:.1%})')
    print(f'LLM input length ({args.text_tokens} text tokens + {args.images} image(s)): '
          f'{out["llm_input"][0]} -> {out["llm_input"][1]}')
    rows = [('projector', out['projector_gflops']), ('LLM prefill', out['prefill_gflops'])]
    if 'vision_gflops' in out:
        rows.insert(0, ('vision tower', out['vision_gflops']))
    print(f'{"GFLOPs":14}{"unmodified":>12}{"patched":>12}')
    for name, (a, b) in rows:
        print(f'{name:14}{a:12.2f}{b:12.2f}')
    if 'reduction_gflops' in out:
        print(f'(of which the reductions themselves: {out["reduction_gflops"]:.3f})')
    return out


if __name__ == '__main__':
    main()
