"""A real-text sanity run of LLaVA-1.5 with fewer visual tokens: the answers and the time to first
token of the unreduced model and of each method at each visual-token budget, on image/question
pairs of your own.

    .venv/bin/python benchmarks/llava_table5.py --model ~/llava-1.5-7b-hf --pairs ~/pairs
    benchmarks/llava_table5.sh ~/llava-1.5-7b-hf ~/pairs --max-new-tokens 16

``--model``: a local llava-hf checkpoint folder (``LlavaForConditionalGeneration`` and
``AutoProcessor`` load from it; nothing is downloaded). ``--pairs``: a folder of ``NAME.jpg``
(or ``.jpeg``, ``.png``) images, each with ``NAME.txt`` holding its question and, optionally,
``NAME.answer.txt`` holding the reference answer (one accepted answer per line); with references
the run reports exact-match and contains-answer accuracy (lower case, punctuation and articles
ignored). A method is a name of ``mmtt.modules.METHODS`` or ``VISUAL_TOKEN_METHODS``
(``prumerge``, ``prumerge+``, ``visionzip``), optionally with a Token Transforming preset:
``transform:fast``; ``transform`` alone is the paper's setting.

Each pair is answered greedily, one image at a time, by every variant (the unreduced model, then
each method at each budget, patched in place by ``mmtt.hosts.transformers.apply_patch``). The
variants take turns within every round, and after ``--warmup`` untimed rounds each stage is the
median over the ``--rounds`` timed ones: the vision tower (a forward hook), the prefill (the first
forward of ``generate``, less the vision tower where it runs inside: the projector and the language
model on the prompt), the time to first token (from the ``generate`` call to the end of its first
forward, the vision tower included) and the generation of the remaining tokens: CUDA events on a
GPU, ``time.perf_counter`` on the CPU. A progress line per round and pair goes to stderr; the
JSON (``--out``, default ``benchmarks/results/llava_table5_<model>_<device>.json``) is rewritten
after every round.
"""
import argparse
import json
import re
import statistics
import string
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtt.tools._provenance import describe_device, provenance  # noqa: E402

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
ANSWER_SUFFIX = '.answer.txt'
DEFAULT_METHODS = ('transform', 'transform:fast', 'tome', 'prumerge', 'prumerge+', 'visionzip')
DEFAULT_BUDGETS = (64, 128, 192)
DEFAULT_PROMPT = 'USER: <image>\n{question} ASSISTANT:'   # LLaVA-1.5's conversation format
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
STAGES = ('vision_s', 'prefill_s', 'ttft_s', 'generation_s', 'total_s')
UNMODIFIED = 'unmodified'


class Pair(NamedTuple):
    name: str
    image: Path
    question: str
    references: List[str]   # accepted answers; empty without NAME.answer.txt


class Variant(NamedTuple):
    name: str
    method: Optional[str]   # None: the unreduced model
    preset: Optional[str]
    visual_tokens: Optional[int]

    def patch_kwargs(self) -> dict:
        """``apply_patch``'s arguments (a reduced variant only)."""
        kwargs = dict(method=self.method, visual_tokens=self.visual_tokens)
        return dict(kwargs, preset=self.preset) if self.preset else kwargs


class OneLineParser(argparse.ArgumentParser):
    """argparse's exit code 2 for a bad option, told in one line (``PROG: error: MESSAGE``)."""

    def error(self, message: str) -> None:
        self.exit(2, f'{self.prog}: error: {message}\n')


def read_pairs(folder: Path) -> List[Pair]:
    """The pairs of ``folder`` by name. Raises ValueError naming a pair without question, a
    question without image or an empty folder."""
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    images: Dict[str, Path] = {}
    for path in sorted(files.values()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise ValueError(f'{images[path.stem].name} and {path.name} share the name {path.stem!r}')
            images[path.stem] = path
    questions = {p.name[:-len('.txt')] for p in files.values()
                 if p.name.endswith('.txt') and not p.name.endswith(ANSWER_SUFFIX)}
    if not images:
        raise ValueError(f'--pairs {folder}: no images (NAME.jpg, .jpeg or .png, with its question in NAME.txt)')
    for name in sorted(questions - set(images)):
        raise ValueError(f'--pairs {folder}: {name}.txt has no image ({name}.jpg, .jpeg or .png)')
    pairs = []
    for name, image in sorted(images.items()):
        if name not in questions:
            raise ValueError(f'--pairs {folder}: {image.name} has no question ({name}.txt)')
        question = files[f'{name}.txt'].read_text().strip()
        if not question:
            raise ValueError(f'--pairs {folder}: {name}.txt is empty')
        answer = files.get(name + ANSWER_SUFFIX)
        references = [] if answer is None else [a.strip() for a in answer.read_text().splitlines() if a.strip()]
        pairs.append(Pair(name, image, question, references))
    return pairs


def plan_variants(methods: Sequence[str], budgets: Sequence[int]) -> List[Variant]:
    """The unreduced model, then every method at every budget. Raises ValueError for an unknown
    method or preset."""
    from mmtt.hosts.transformers import VISUAL_TOKEN_METHODS
    from mmtt.modules import METHODS, method_spec
    from mmtt.modules.presets import PRESETS
    gridded = [m for m in METHODS if method_spec(m).needs_grid]   # CLIP's host gives no token grid
    known = (*(m for m in METHODS if m not in gridded), *VISUAL_TOKEN_METHODS)
    variants = [Variant(UNMODIFIED, None, None, None)]
    for spec in methods:
        method, _, preset = spec.partition(':')
        if method in gridded:
            raise ValueError(f'--methods {spec}: {method!r} clusters the token grid, which the LLaVA host '
                             'does not give')
        if method not in known:
            raise ValueError(f'--methods {spec}: unknown method {method!r}; choose from {", ".join(known)}')
        if preset and preset not in PRESETS:
            raise ValueError(f'--methods {spec}: unknown preset {preset!r}; choose from {", ".join(PRESETS)}')
        variants += [Variant(f'{spec}@{b}', method, preset or None, b) for b in budgets]
    return variants


def load_config(folder: Path):
    """The checkpoint's config, with SDPA attention (what the patch takes). Raises ValueError
    for a folder that holds no LLaVA."""
    from transformers import AutoConfig
    if not (folder / 'config.json').is_file():
        raise ValueError(f'--model {folder}: no config.json (give a local llava-hf checkpoint folder)')
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != 'llava':
        raise ValueError(f'--model {folder}: a {config.model_type!r} checkpoint, not a LLaVA (llava)')
    for c in (config, config.vision_config, config.text_config):
        c._attn_implementation = 'sdpa'
    return config


def check_budgets(config, variants: Sequence[Variant]) -> None:
    """Patch a weightless (meta device) copy with every variant, before the weights load.
    Raises ValueError naming a budget the method cannot reach."""
    from transformers import LlavaForConditionalGeneration

    from mmtt.hosts.transformers import apply_patch, remove_patch
    with torch.device('meta'):
        model = LlavaForConditionalGeneration(config)
    for variant in variants[1:]:
        try:
            apply_patch(model, **variant.patch_kwargs())
        except ValueError as err:
            raise ValueError(f'--visual-tokens {variant.visual_tokens} for {variant.name.split("@")[0]}: '
                             f'{" ".join(str(err).split())}') from None
        remove_patch(model)


class StageClock:
    """Hooks that mark the stages of one ``generate`` call: the vision tower's first forward,
    the model's first forward (the prefill) and the language model's first input length."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        from mmtt.hosts import transformers as tp
        self.device = device
        self.marks: Dict[str, object] = {}
        self.lm_tokens: Optional[int] = None
        tower = tp._llava_tower(model)
        lm = model.model.language_model if tp.V5 else model.language_model
        self.handles = [
            tower.register_forward_pre_hook(lambda *_: self.mark('vision_start')),
            tower.register_forward_hook(lambda *_: self.mark('vision_end')),
            model.register_forward_pre_hook(lambda *_: self.mark('prefill_start')),
            model.register_forward_hook(lambda *_: self.mark('prefill_end')),
            lm.register_forward_pre_hook(self._lm_input, with_kwargs=True),
        ]

    def now(self) -> object:
        if self.device.type == 'cuda':
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self.device.type != 'cpu':
            getattr(torch, self.device.type).synchronize()
        return time.perf_counter()

    def mark(self, name: str) -> None:
        if name not in self.marks:   # the first call only: the prefill's
            self.marks[name] = self.now()

    def _lm_input(self, module, args, kwargs) -> None:
        if self.lm_tokens is None:
            embeds = kwargs.get('inputs_embeds')
            self.lm_tokens = int(embeds.shape[1]) if embeds is not None else None

    def start(self) -> None:
        self.marks, self.lm_tokens = {'start': self.now()}, None

    def stages(self) -> Dict[str, float]:
        """Seconds of each stage of the call since :meth:`start`."""
        self.mark('end')
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

        def span(a: str, b: str) -> float:
            start, end = self.marks[a], self.marks[b]
            return start.elapsed_time(end) / 1e3 if self.device.type == 'cuda' else end - start
        vision = span('vision_start', 'vision_end')
        # 4.51 runs the vision tower inside generate's first forward, transformers 5 before it.
        order = list(self.marks)
        inside = order.index('prefill_start') < order.index('vision_start')
        return dict(vision_s=vision, prefill_s=span('prefill_start', 'prefill_end') - inside * vision,
                    ttft_s=span('start', 'prefill_end'), generation_s=span('prefill_end', 'end'),
                    total_s=span('start', 'end'))


def answer(model, processor, inputs: dict, max_new_tokens: int, clock: StageClock) -> dict:
    """One greedy ``generate``: the decoded answer, its new tokens, the language model's prompt
    length and the seconds of each stage."""
    clock.start()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    stages = clock.stages()
    new = out[0, inputs['input_ids'].shape[1]:]
    text = processor.decode(new, skip_special_tokens=True).strip()
    return dict(answer=text, new_tokens=int(new.numel()), lm_prompt_tokens=clock.lm_tokens, **stages)


def normalize(text: str) -> str:
    text = text.lower().translate(str.maketrans(string.punctuation, ' ' * len(string.punctuation)))
    return ' '.join(w for w in text.split() if w not in ('a', 'an', 'the'))


def scores(prediction: str, references: Sequence[str]) -> Dict[str, bool]:
    """Exact match and contains-answer (the reference as whole words of the prediction)."""
    pred, refs = normalize(prediction), [normalize(r) for r in references]
    return dict(exact=any(pred == r for r in refs), contains=any(f' {r} ' in f' {pred} ' for r in refs if r))


def summarize(variants: Sequence[Variant], cases: List[dict]) -> Dict[str, dict]:
    """Per variant: the median of each stage over every pair and timed round, the time-to-first-
    token speed-up, agreement with the unreduced answers and, with references, the accuracy."""
    summary = {}
    for v in variants:
        runs = [r for case in cases for r in case['runs'][v.name]]
        if not runs:
            continue
        entry = {stage: statistics.median(r[stage] for r in runs) for stage in STAGES}
        entry['generation_per_token_s'] = statistics.median(
            r['generation_s'] / max(r['new_tokens'] - 1, 1) for r in runs)
        entry['lm_prompt_tokens'] = statistics.median(r['lm_prompt_tokens'] for r in runs)
        entry['same_as_unmodified'] = statistics.mean(
            c['answers'][v.name] == c['answers'][UNMODIFIED] for c in cases)
        scored = [c for c in cases if c['references']]
        if scored:
            for key in ('exact', 'contains'):
                entry[key] = statistics.mean(scores(c['answers'][v.name], c['references'])[key] for c in scored)
        summary[v.name] = entry
    base = summary.get(UNMODIFIED)
    for entry in summary.values():
        entry['ttft_speedup'] = base['ttft_s'] / entry['ttft_s'] if base else None
    return summary


def table(variants: Sequence[Variant], cases: List[dict], summary: Dict[str, dict]) -> str:
    lines = ['| pair | variant | answer |', '|---|---|---|']
    for case in cases:
        lines += [f"| {case['name']} | {v.name} | {case['answers'][v.name]!r} |" for v in variants]
    scored = any(c['references'] for c in cases)
    lines += ['', '| variant | LLM prompt | vision ms | prefill ms | TTFT ms | TTFT speed-up | ms/token | '
              'same answer' + (' | exact | contains |' if scored else ' |'),
              '|---' * (8 + 2 * scored) + '|']
    for name, s in summary.items():
        row = (f"| {name} | {s['lm_prompt_tokens']:g} | {s['vision_s'] * 1e3:.1f} | {s['prefill_s'] * 1e3:.1f} | "
               f"{s['ttft_s'] * 1e3:.1f} | x{s['ttft_speedup']:.2f} | {s['generation_per_token_s'] * 1e3:.1f} | "
               f"{s['same_as_unmodified']:.0%} |")
        lines.append(row + (f" {s['exact']:.0%} | {s['contains']:.0%} |" if scored else ''))
    return '\n'.join(lines)


def slug(text: str) -> str:
    return re.sub(r'[^a-z0-9.]+', '-', text.lower()).strip('-')


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = OneLineParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 2)[2],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='a local llava-hf LLaVA-1.5 checkpoint folder')
    parser.add_argument('--pairs', required=True, help='a folder of NAME.jpg|png + NAME.txt [+ NAME.answer.txt]')
    parser.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS),
                        help=f'METHOD or METHOD:PRESET (default: {" ".join(DEFAULT_METHODS)})')
    parser.add_argument('--visual-tokens', nargs='+', type=int, default=list(DEFAULT_BUDGETS),
                        help='visual tokens per image, each a budget for every method (default: 64 128 192)')
    parser.add_argument('--max-new-tokens', type=int, default=32, help='tokens generated per answer (32)')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (3)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first (1)')
    parser.add_argument('--prompt', default=DEFAULT_PROMPT,
                        help="the prompt, with {question} (default: LLaVA-1.5's "
                             "'USER: <image>\\n{question} ASSISTANT:')")
    parser.add_argument('--device', help="'cuda', 'cuda:1' or 'cpu' (default: cuda if available)")
    parser.add_argument('--dtype', choices=DTYPES,
                        help='weights and pixels (default: float16 on CUDA, else float32)')
    parser.add_argument('--out',
                        help='the JSON result (default: benchmarks/results/llava_table5_<model>_<device>.json)')
    args = parser.parse_args(argv)
    for flag, low in (('max_new_tokens', 1), ('rounds', 1), ('warmup', 0)):
        if getattr(args, flag) < low:
            parser.error(f'--{flag.replace("_", "-")} {getattr(args, flag)} must be >= {low}')
    if any(b < 1 for b in args.visual_tokens):
        parser.error(f'--visual-tokens {" ".join(map(str, args.visual_tokens))}: each must be >= 1')
    if '{question}' not in args.prompt:
        parser.error(f'--prompt {args.prompt!r} has no {{question}}')
    args.device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    args.dtype = args.dtype or ('float16' if args.device.type == 'cuda' else 'float32')
    model = Path(args.model).expanduser()
    if not model.is_dir():
        parser.error(f'--model {args.model}: not a folder (give a local llava-hf checkpoint folder)')
    if not Path(args.pairs).expanduser().is_dir():
        parser.error(f'--pairs {args.pairs}: not a folder')
    try:
        args.pair_list = read_pairs(Path(args.pairs).expanduser())
        args.variants = plan_variants(args.methods, args.visual_tokens)
        args.config = load_config(model)
        check_budgets(args.config, args.variants)
    except ValueError as err:
        parser.error(' '.join(str(err).split()))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmtt.hosts.transformers import V5, _image_token, apply_patch, remove_patch
    device, dtype, variants, pairs = args.device, DTYPES[args.dtype], args.variants, args.pair_list
    folder = str(Path(args.model).expanduser())
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, attn_implementation='sdpa', **{'dtype' if V5 else 'torch_dtype': dtype})
    model = model.to(device).eval()
    clock = StageClock(model, device)
    inputs = []
    for pair in pairs:
        with Image.open(pair.image) as image:
            batch = processor(images=image.convert('RGB'), text=args.prompt.format(question=pair.question),
                              return_tensors='pt')
        inputs.append(dict(input_ids=batch['input_ids'].to(device), attention_mask=batch['attention_mask'].to(device),
                           pixel_values=batch['pixel_values'].to(device, dtype)))
    # The unreduced model's visual tokens: the placeholders the processor writes per image.
    full = int((inputs[0]['input_ids'] == _image_token(model.config)).sum())
    variants[0] = variants[0]._replace(visual_tokens=full)
    device_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type
    out = Path(args.out or REPO / 'benchmarks' / 'results' /
               f'llava_table5_{slug(Path(folder).name)}_{slug(device_name)}.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = [dict(name=p.name, question=p.question, references=p.references, answers={},
                  stable={}, runs={v.name: [] for v in variants}) for p in pairs]
    results = dict(provenance=provenance(device, args.dtype), device=describe_device(device), model=folder,
                   pairs=str(Path(args.pairs).expanduser()), prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                   rounds=args.rounds, warmup=args.warmup, methods=list(args.methods),
                   visual_tokens=list(args.visual_tokens), variants=[v._asdict() for v in variants],
                   cases=cases, summary={})
    total = args.warmup + args.rounds
    for r in range(total):
        timed = r >= args.warmup
        for i, (pair, case, batch) in enumerate(zip(pairs, cases, inputs), 1):
            t0 = time.perf_counter()
            for v in variants:   # the variants take turns: drift hits them alike
                remove_patch(model)
                if v.method is not None:
                    apply_patch(model, **v.patch_kwargs())
                run = answer(model, processor, batch, args.max_new_tokens, clock)
                text = run.pop('answer')
                case['answers'].setdefault(v.name, text)
                case['stable'][v.name] = case['stable'].get(v.name, True) and text == case['answers'][v.name]
                if timed:
                    case['runs'][v.name].append(run)
            remove_patch(model)
            kind = 'timed' if timed else 'warm-up'
            print(f'[round {r + 1}/{total} {kind}, pair {i}/{len(pairs)} {pair.name}] {len(variants)} variants '
                  f'in {time.perf_counter() - t0:.1f} s', file=sys.stderr, flush=True)
        results['summary'] = summarize(variants, cases) if timed else {}
        results['seconds_total'] = time.perf_counter() - start
        out.write_text(json.dumps(results, indent=1) + '\n')   # after each round: a cut-off run keeps them
    for handle in clock.handles:
        handle.remove()
    print(table(variants, cases, results['summary']))
    print(f'{results["seconds_total"]:.0f} s; written to {out}')
    return results


if __name__ == '__main__':
    main()
