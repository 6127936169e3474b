"""Render the measured tables of README.md, docs/ and configs/*/README.md from benchmark results.

Every table of measured figures sits between ``<!-- mmtt:table NAME -->`` and
``<!-- mmtt:end -->`` and is written by this script from ``benchmarks/results/*.json`` (made by the
``benchmarks/*.sh`` scripts) and the configs' metafiles (``benchmarks/flops.sh``), so a figure has
one value wherever it appears. A run under ``torch.compile`` (the scripts' ``compile`` argument)
writes to ``benchmarks/results/compiled/`` under the eager run's name; the ``compiled:*`` tables put
the two side by side. ``--check`` changes nothing and fails when a block differs from
what would be rendered (the test suite runs it).

    python benchmarks/render.py            # rewrite the blocks
    python benchmarks/render.py --check    # exit 1 and name the stale blocks
"""
import argparse
import functools
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'results'
COMPILED = 'compiled'   # the folder of RESULTS holding the torch.compile runs
BLOCK = re.compile(r'(<!-- mmtt:table (\S+) -->\n)(.*?)(<!-- mmtt:end -->)', re.S)

# Variant labels of benchmarks/pareto_vit_s14.sh, as the docs name them.
VARIANT_NAMES = {
    'paper': "`preset='paper'` (default)", 'fast': "`preset='fast'`", 'tome': 'ToMe (keys)',
    'tome-hidden': "ToMe (`metric='hidden'`)", 'tps': 'TPS', 'pitome': 'PiToMe', 'evit': 'EViT',
    'prune': 'pruning'}
RUNS = {'fp32': 'float32, 448 px (1024 tokens)', 'bf16': 'bfloat16 autocast, 448 px',
        '224': 'float32, 224 px (256 tokens)'}

# The paper's own figures, quoted for comparison (Tables 1-4 and section 4.3).
PAPER = {
    'deit-s': 'GFLOPs 4.6 -> 3.0, top-1 79.8 -> 79.7 (Table 1)',
    'ps-vit-b14': 'GFLOPs 5.4 -> 3.7, top-1 81.7 -> 81.5 (Table 2)',
    'segmenter': '-30% GFLOPs, mIoU -0.2 ("30% lossless", Sec. 4.3)',
    'dpt': 'GFLOPs 280 -> 200, AbsRel 0.110 -> 0.108 (Table 3)',
    'dino': 'GFLOPs 936 -> 734, FPS x1.21, mAP 58.5 -> 57.3 (Table 4)',
}


def load(name: str) -> Optional[dict]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def load_compiled(name: str) -> Optional[dict]:
    """The ``torch.compile`` run beside the eager result ``name``."""
    return load(f'{COMPILED}/{name}')


def missing(command: str) -> str:
    return f'_Not measured: run `{command}`._\n'


def source(name: str, result: dict, command: str) -> str:
    prov = result.get('provenance', {})
    versions = prov.get('versions', {})
    what = ', '.join(filter(None, [prov.get('hardware') or result.get('hardware'),
                                   prov.get('dtype'), versions.get('torch') and f"torch {versions['torch']}",
                                   prov.get('commit') and f"commit {prov['commit']}", prov.get('date')]))
    return f'\n<sub>`benchmarks/results/{name}`, from `{command}`: {what}.</sub>\n'


def metafile_models(family: str) -> List[dict]:
    return yaml.safe_load((ROOT / 'configs' / family / 'metafile.yml').read_text())['Models']


def model_entry(family: str, config_name: str) -> dict:
    for model in metafile_models(family):
        if model['Name'] == config_name:
            return model
    raise KeyError(f'{config_name} is not in configs/{family}/metafile.yml')


def fmt_ratio(value: float) -> str:
    return f'x{value:.2f}'


# ---------------------------------------------------------------------------------------------
# The ViT-S/14 sweeps (benchmarks/pareto_vit_s14.sh)

def pareto_points(result: dict) -> Dict[str, Dict[float, dict]]:
    table: Dict[str, Dict[float, dict]] = {}
    for p in result['points']:
        table.setdefault(p['label'], {})[round(p['keep_ratio'], 3)] = p
    return table


def render_pareto(run: str, doc: Path) -> str:
    name = f'pareto_vit_s14_{run}.json'
    result = load(name)
    command = f'benchmarks/pareto_vit_s14.sh {run}'
    if result is None:
        return missing(command)
    table = pareto_points(result)
    keeps = sorted({k for label, pts in table.items() if label != 'unmodified' for k in pts}, reverse=True)
    batch = result['config']['batch']
    lines = [f'{RUNS[run]}; {result["num_images"]} photos; cells: saliency IoU against the unmodified '
             f'model / speed-up at batch 1 / at batch {batch}; GFLOPs at the middle keep ratio.', '',
             '| setting | ' + ' | '.join(f'keep {k:g}' for k in keeps)
             + f' | GFLOPs (keep {keeps[len(keeps) // 2]:g}) |',
             '|---' * (len(keeps) + 2) + '|']
    base = table['unmodified'][1.0]
    for label in VARIANT_NAMES:
        if label not in table:
            continue
        pts = table[label]
        cells = [f"{pts[k]['iou']:.3f} / x{pts[k]['speedup_b1']:.2f} / x{pts[k]['speedup_batch']:.2f}"
                 if k in pts else '-' for k in keeps]
        mid = pts.get(keeps[len(keeps) // 2])
        flops = f"{mid['gflops']:.2f}" if mid else '-'
        lines.append(f'| {VARIANT_NAMES[label]} | ' + ' | '.join(cells) + f' | {flops} |')
    lines.append(f'| unmodified | 1 / x1 / x1 (median batch-1 latency {base["latency_ms"]:.0f} ms) |'
                 + ' |' * (len(keeps) - 1) + f' {base["gflops"]:.2f} |')
    spread = speed_spread(result)
    lines.append('')
    lines.append(f'Timed rounds of one point spread by a median {spread:.0%} (interquartile range over '
                 'median): speed-ups within about that of each other are a tie. The IoU is deterministic.')
    rows = result.get('equal_speed') or []
    if rows:
        held = sum(r['margin'] is not None and r['margin'] >= 0 for r in rows)
        read = [r for r in rows if r['interpolated_margin'] is not None]
        level = sum(r['interpolated_margin'] >= 0 for r in read)
        lines.append(f'Against the {len(rows)} peer points, `paper` or `fast` has a point at least as fast '
                     f'with at least their IoU at {held}; read on their fronts at exactly the peer\'s speed, '
                     f'they are at or above {level} of the {len(read)} they reach.')
        behind = sorted((r for r in read if r['interpolated_margin'] < 0), key=lambda r: r['interpolated_margin'])
        if behind:
            lines.append('Behind at equal speed: ' + '; '.join(
                f"{VARIANT_NAMES.get(r['label'], r['label'])} at keep {r['keep_ratio']:g} "
                f"({r['interpolated_margin']:+.3f} IoU)" for r in behind) + '.')
    return '\n'.join(lines) + '\n' + source(name, result, command)


def speed_spread(result: dict) -> float:
    spreads = []
    for p in result['points']:
        rounds = sorted(p.get('latency_ms_rounds') or [])
        if len(rounds) >= 4:
            q1, q3 = rounds[len(rounds) // 4], rounds[(3 * len(rounds)) // 4]
            spreads.append((q3 - q1) / p['latency_ms'])
    spreads.sort()
    return spreads[len(spreads) // 2] if spreads else float('nan')


# ---------------------------------------------------------------------------------------------
# One reduction, step by step (benchmarks/reduction_cost.sh)

# One reduction beyond plain SDPA: the paper's path and preset='fast' (strided scores, the mixed
# anchored top_k=2 build, recovery read off the build), against ToMe's build + apply.
REDUCTION_PATHS = {"`preset='paper'` (exact eq. 2 scores, dense W, eq. 9 recovery)":
                   ('scores', 'build', 'apply', 'recovery nearest'),
                   "`preset='fast'`": ('scores stride 8', 'build mixed anchored top_k=2',
                                       'apply mixed anchored top_k=2', 'recovery share')}


def reduction_ms(ms: Dict[str, float], parts: Sequence[str]) -> float:
    """One reduction's steps beyond the plain SDPA an unreduced block pays anyway."""
    return sum(ms[p] for p in parts) - ms['sdpa']


def render_cost(doc: Path) -> str:
    name, command = 'reduction_cost.json', 'benchmarks/reduction_cost.sh'
    result = load(name)
    if result is None:
        return missing(command)
    runs = result['results']
    keys = list(runs)
    steps = list(runs[keys[0]])
    lines = [f'N = {result["tokens"]} tokens entering block {result["args"]["layer"] + 1}, batch '
             f'{result["args"]["batch"]}, medians of interleaved rounds, ms.', '',
             '| step | ' + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    for step in steps:
        lines.append(f'| {step} | ' + ' | '.join(f'{runs[k].get(step, float("nan")):.2f}' for k in keys) + ' |')
    lines += ['', '| one reduction beyond plain SDPA, ms (x ToMe\'s build + apply) | '
              + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    for label, parts in REDUCTION_PATHS.items():
        if not all(p in runs[keys[0]] for p in parts):
            continue
        cells = []
        for k in keys:
            cost = reduction_ms(runs[k], parts)
            cells.append(f"{cost:.2f} (x{cost / runs[k]['tome']:.1f})")
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n' + source(name, result, command)


# ---------------------------------------------------------------------------------------------
# The dense hosts (benchmarks/hosts.sh) and the configs' GFLOPs (metafiles)

HOSTS = {'segmenter': 'hosts_segmenter.json', 'dpt': 'hosts_dpt.json', 'dino': 'hosts_dino.json'}


def render_host(host: str, doc: Path) -> str:
    name, command = HOSTS[host], f'benchmarks/hosts.sh {host}'
    result = load(name)
    if result is None:
        return missing(command)
    rows = result['results']
    args = result['args']
    shape = 'x'.join(map(str, args['shape'])) if args.get('shape') else 'the config crop'
    lines = [f'`{result["target"]}`, input {shape}, '
             f'batch {args["batch"]}, median of {args["repeats"]} interleaved rounds; ratios against the '
             'first row.', '',
             '| variant | GFLOPs | GFLOPs x | latency ms | latency x | throughput x | peak memory MB |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['method']} | {r['gflops']:.1f} | {fmt_ratio(r['gflops_ratio'])} | "
                     f"{r['latency_ms']:.0f} | {fmt_ratio(r['latency_ratio'])} | "
                     f"{fmt_ratio(r['throughput_ratio'])} | {r['peak_mem_mb']:.0f} |")
    vs = [r for r in rows if 'latency_ratio_vs_sdpa' in r]
    if vs:
        lines.append('')
        lines.append('Against the unmodified model on the same fused attention kernel (the reduction alone): '
                     + '; '.join(f"{r['method']} latency x{r['latency_ratio_vs_sdpa']:.2f}, throughput "
                                 f"x{r['throughput_ratio_vs_sdpa']:.2f}" for r in vs) + '.')
    return '\n'.join(lines) + '\n' + source(name, result, command)


# ---------------------------------------------------------------------------------------------
# Eager and compiled side by side (the scripts' `compile` argument)

def compiled_how(result: dict) -> str:
    return f"torch.compile mode {result.get('compile_mode', 'default')}, backend {result.get('compile_backend')}"


def eager_compiled(eager: Optional[float], compiled: Optional[float], fmt: str) -> str:
    return ' / '.join('-' if v is None else fmt.format(v) for v in (eager, compiled))


def not_compiled(what: str, of: str, commands: Sequence[str]) -> List[str]:
    """The line naming the compiled runs not made yet (their ``commands``), or none."""
    if not commands:
        return []
    return [f'No compiled {what} of {len(commands)} {of}{"s" if len(commands) > 1 else ""} yet: '
            + ', '.join(commands) + '.\n']


def render_compiled_hosts(doc: Path) -> str:
    blocks, absent = [], []
    for host, name in HOSTS.items():
        compiled = load_compiled(name)
        if compiled is None:
            absent.append(f'`benchmarks/hosts.sh {host} compile`')
            continue
        eager = {r['method']: r for r in (load(name) or {}).get('results', [])}
        args = compiled['args']
        lines = [f'`{compiled["target"]}`, batch {args["batch"]}, median of {args["repeats"]} interleaved '
                 f'rounds, {compiled_how(compiled)}; cells: eager / compiled, each ratio against its own '
                 'run\'s first row.', '',
                 '| variant | latency ms | latency x | throughput x |', '|---|---|---|---|']
        for r in compiled['results']:
            e = eager.get(r['method'], {})
            lines.append(f"| {r['method']} | {eager_compiled(e.get('latency_ms'), r['latency_ms'], '{:.0f}')} | "
                         f"{eager_compiled(e.get('latency_ratio'), r['latency_ratio'], 'x{:.2f}')} | "
                         f"{eager_compiled(e.get('throughput_ratio'), r['throughput_ratio'], 'x{:.2f}')} |")
        blocks.append('\n'.join(lines) + '\n' + source(f'{COMPILED}/{name}', compiled,
                                                        f'benchmarks/hosts.sh {host} compile'))
    return '\n'.join(blocks + not_compiled('run', 'host', absent))


def flops_share(point: dict, speedup: str) -> Optional[float]:
    """``point``'s speed-up (``speedup``: its key) over its GFLOPs ratio to the unmodified model."""
    if point.get(speedup) is None or not point.get('gflops_ratio'):
        return None
    return point[speedup] * point['gflops_ratio']


SPEEDUPS = ('speedup_b1', 'speedup_batch')


def compiled_pareto_rows(table: Dict[str, Dict[float, dict]], eager: Dict[str, Dict[float, dict]],
                         keeps: Sequence[float], value, fmt: str, keys: Sequence[str] = SPEEDUPS) -> List[str]:
    """One row per setting of ``table`` (compiled points): at each keep ratio and for each of
    ``keys``, ``value(eager point, key) / value(compiled point, key)``."""
    rows = []
    for label in VARIANT_NAMES:
        if label not in table:
            continue
        cells = []
        for k in keeps:
            c, e = table[label].get(k), eager.get(label, {}).get(k, {})
            cells += ['-'] * len(keys) if c is None else [
                eager_compiled(value(e, key), value(c, key), fmt) for key in keys]
        rows.append(f'| {VARIANT_NAMES[label]} | ' + ' | '.join(cells) + ' |')
    return rows


def saliency_iou(point: dict, key: str) -> Optional[float]:
    """The point's saliency IoU in its own mode: ``compiled_iou`` in a compiled run."""
    return point.get('compiled_iou' if point.get('compile_max_abs_diff') is not None else 'iou')


def render_compiled_pareto(doc: Path) -> str:
    blocks, absent = [], []
    for run, what in RUNS.items():
        name = f'pareto_vit_s14_{run}.json'
        compiled = load_compiled(name)
        if compiled is None:
            absent.append(f'`benchmarks/pareto_vit_s14.sh {run} compile`')
            continue
        eager = pareto_points(load(name) or {'points': []})
        table = pareto_points(compiled)
        keeps = sorted({k for label, pts in table.items() if label != 'unmodified' for k in pts}, reverse=True)
        batch = compiled['config']['batch']
        header = ['| setting | ' + ' | '.join(f'keep {k:g}, batch 1 | keep {k:g}, batch {batch}' for k in keeps)
                  + ' |', '|---' * (2 * len(keeps) + 1) + '|']
        lines = [f'{what}, {compiled_how(compiled)}; cells: speed-up eager / compiled, each against its own '
                 'run\'s unmodified model.', '', *header]
        lines += compiled_pareto_rows(table, eager, keeps, lambda p, key: p.get(key), 'x{:.2f}')
        base, eager_base = table['unmodified'][1.0], eager.get('unmodified', {}).get(1.0, {})
        lines += ['', 'The unmodified model\'s median batch-1 latency, eager / compiled: '
                  f"{eager_compiled(eager_base.get('latency_ms'), base['latency_ms'], '{:.0f}')} ms.", '',
                  'How much of the GFLOPs reduction becomes speed: the speed-up divided by the GFLOPs '
                  'ratio (1 when time falls in proportion to GFLOPs); cells eager / compiled.', '', *header]
        lines += compiled_pareto_rows(table, eager, keeps, flops_share, '{:.2f}')
        lines += ['', 'Saliency IoU against the unmodified model, each measured in its own mode (the '
                  'compiled model against the compiled unmodified one); cells eager / compiled.', '',
                  '| setting | ' + ' | '.join(f'keep {k:g}' for k in keeps) + ' |', '|---' * (len(keeps) + 1) + '|']
        lines += compiled_pareto_rows(table, eager, keeps, saliency_iou, '{:.3f}', keys=('iou',))
        blocks.append('\n'.join(lines) + '\n' + source(f'{COMPILED}/{name}', compiled,
                                                        f'benchmarks/pareto_vit_s14.sh {run} compile'))
    return '\n'.join(blocks + not_compiled('sweep', 'run', absent))


def render_compiled_cost(doc: Path) -> str:
    name, command = 'reduction_cost.json', 'benchmarks/reduction_cost.sh compile'
    compiled = load_compiled(name)
    if compiled is None:
        return f'No compiled run yet: `{command}`.\n'
    runs, eager = compiled['results'], (load(name) or {}).get('results', {})
    keys = list(runs)
    lines = [f'N = {compiled["tokens"]} tokens, batch {compiled["args"]["batch"]}, {compiled_how(compiled)}; '
             'cells: ms eager / compiled, medians of interleaved rounds.', '',
             '| step | ' + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    for step in runs[keys[0]]:
        lines.append(f'| {step} | ' + ' | '.join(
            eager_compiled(eager.get(k, {}).get(step), runs[k].get(step), '{:.2f}') for k in keys) + ' |')
    lines += ['', '| one reduction beyond plain SDPA, x ToMe\'s build + apply | ' + ' | '.join(keys) + ' |',
              '|---' * (len(keys) + 1) + '|']
    for label, parts in REDUCTION_PATHS.items():
        if not all(p in runs[keys[0]] for p in parts):
            continue
        cells = []
        for k in keys:
            ratios = [reduction_ms(ms, parts) / ms['tome'] if ms and all(p in ms for p in parts) else None
                      for ms in (eager.get(k), runs[k])]
            cells.append(eager_compiled(*ratios, 'x{:.1f}'))
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n' + source(f'{COMPILED}/{name}', compiled, command)


def link(target: str, doc: Path) -> str:
    """``target`` (relative to the repository root) as a link relative to the document ``doc``."""
    return os.path.relpath(ROOT / target, doc.parent)


def render_configs(family: str, doc: Path) -> str:
    lines = ['| config | method | keep | reduce layers (0-based) | input | GFLOPs unmodified -> mmtt | checkpoint |',
             '|---|---|---|---|---|---|---|']
    for m in metafile_models(family):
        meta = m['Metadata']
        layers = ', '.join(map(str, meta.get('Reduce Layers') or [])) or '-'
        weights = m.get('Weights')
        checkpoint = f'[weights]({weights})' if weights else 'bring your own'
        lines.append(f"| [{Path(m['Config']).name}]({link(m['Config'], doc)}) | {meta.get('Method', '-')} | "
                     f"{meta.get('Keep Ratio', '-')} | {layers} | {meta.get('Input', '-')} | "
                     f"{meta['GFLOPs (unmodified)']} -> {meta['GFLOPs']} | {checkpoint} |")
    if family == 'mmpretrain':   # tools/update_metafile.py leaves this metafile to be written by hand
        how = ('counted by `python tools/get_flops.py CONFIG --shape 224 224` (384 for the 384 px config) '
               'and written by hand')
    else:
        how = f'written by `benchmarks/flops.sh {family}`'
    return ('\n'.join(lines) + f'\n\n<sub>GFLOPs from `configs/{family}/metafile.yml`, {how} '
            '(MMEngine\'s counter, the reduction\'s own ops included).</sub>\n')


# ---------------------------------------------------------------------------------------------
# README: the one results table

def render_results(doc: Path) -> str:
    lines = ['| model (config) | GFLOPs | measured speed-up (CPU) | fidelity to the unmodified model | paper |',
             '|---|---|---|---|---|']
    pareto = load('pareto_vit_s14_fp32.json')
    if pareto is not None:
        table = pareto_points(pareto)
        base = table['unmodified'][1.0]
        for label in ('paper', 'fast'):
            p = table.get(label, {}).get(0.7)
            if p:
                lines.append(f"| ViT-S/14 saliency, 448 px, {VARIANT_NAMES[label]}, keep 0.7 | "
                             f"{base['gflops']:.1f} -> {p['gflops']:.1f} | x{p['speedup_b1']:.2f} (batch 1) | "
                             f"saliency IoU {p['iou']:.3f} (worst photo {p['iou_min']:.3f}) | - |")
    for what, config, path in (('DeiT-S', 'deit-s_tt_in1k', 'configs/deit-s_tt_in1k.py'),
                               ('PS-ViT-B/14', 'ps-vit-b14_tt_in1k', 'configs/mmpretrain/ps-vit-b14_tt_in1k.py')):
        meta = model_entry('mmpretrain', config)['Metadata']
        lines.append(f"| {what} ([{Path(path).name}]({link(path, doc)})) | "
                     f"{meta['GFLOPs (unmodified)']} -> {meta['GFLOPs']} | - | not measured (no ImageNet labels) | "
                     f"{PAPER[config.split('_')[0]]} |")
    for host, family, config in (('segmenter', 'segmenter', 'segmenter_tt_ade20k'),
                                 ('dpt', 'dpt', 'dpt_tt_nyu'), ('dino', 'dino', 'dino_tt_swin-l_coco')):
        meta = model_entry(family, config)['Metadata']
        speed = '-'
        bench = load(HOSTS[host])
        if bench is not None:
            r = bench['results'][-1]
            speed = f"x{r['latency_ratio']:.2f}"
            if 'latency_ratio_vs_sdpa' in r:
                speed += f" (x{r['latency_ratio_vs_sdpa']:.2f} on the same attention kernel)"
            if bench['args'].get('part') == 'backbone':
                speed += ', backbone'
        what = {'segmenter': 'Segmenter-L, ADE20K 640x640', 'dpt': 'DPT-Hybrid, NYUv2 480x640',
                'dino': 'DINO Swin-L, COCO 800x1333'}[host]
        lines.append(f"| {what} ([{config}.py]({link(f'configs/{config}.py', doc)})) | "
                     f"{meta['GFLOPs (unmodified)']} -> {meta['GFLOPs']} | {speed} | "
                     f"not measured (no dataset offline) | {PAPER[host]} |")
    benchmarks = link('docs/benchmarks.md', doc)
    return ('\n'.join(lines) + f'\n\n<sub>Speed-ups: this project\'s CPU (see [benchmarks]({benchmarks}) '
            'for the machine, commands and every variant); GFLOPs: the configs\' metafiles.</sub>\n')


def render_presets(doc: Path) -> str:
    # presets.py imports nothing of mmtt's: load it alone, without torch.
    spec = importlib.util.spec_from_file_location('mmtt_presets', ROOT / 'mmtt' / 'modules' / 'presets.py')
    presets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(presets)
    PRESETS = presets.PRESETS
    lines = ['| preset | TokenTransform settings | recovery (`recover=True`) | in Swin windows | what it is |',
             '|---|---|---|---|---|']
    for name, preset in PRESETS.items():
        settings = ', '.join(f'{k}={v!r}' for k, v in preset.transform.items())
        lines.append(f"| `'{name}'` | `{settings}` | `'{preset.recovery}'` | {'yes' if preset.windows else 'no'} | "
                     f'{preset.summary} |')
    return '\n'.join(lines) + '\n\n<sub>From `mmtt/modules/presets.py`.</sub>\n'


def render_preset_fronts(doc: Path) -> str:
    """Each preset's measured points in every sweep, beside the peer most faithful at keep 0.7."""
    lines = ['| sweep | setting | keep 0.9 | keep 0.7 | keep 0.5 |', '|---|---|---|---|---|']
    sources = []
    for run, what in RUNS.items():
        result = load(f'pareto_vit_s14_{run}.json')
        if result is None:
            lines.append(f'| {what} | not measured: `benchmarks/pareto_vit_s14.sh {run}` | | | |')
            continue
        sources.append(f'`benchmarks/results/pareto_vit_s14_{run}.json`')
        table = pareto_points(result)
        peers = [label for label in table if label not in ('unmodified', 'paper', 'fast')]
        best_peer = max(peers, key=lambda label: table[label].get(0.7, {}).get('iou', -1.0), default=None)
        for label in ('paper', 'fast', best_peer):
            if label is None or label not in table:
                continue
            cells = [f"{table[label][k]['iou']:.3f} / x{table[label][k]['speedup_b1']:.2f}"
                     if k in table[label] else '-' for k in (0.9, 0.7, 0.5)]
            lines.append(f'| {what} | {VARIANT_NAMES.get(label, label)} | ' + ' | '.join(cells) + ' |')
    return ('\n'.join(lines) + '\n\n<sub>Saliency IoU against the unmodified model / speed-up at batch 1; '
            f'from {", ".join(sources) or "no result yet"} (`benchmarks/pareto_vit_s14.sh`). The third row of '
            'each sweep is the peer most faithful at keep 0.7; every peer is in '
            f'[benchmarks]({link("docs/benchmarks.md", doc)}).</sub>\n')


def render_tune(doc: Path) -> str:
    """The measured front of ``tools/tune.py`` on the ViT-S/14 and the point it chose."""
    name, command = 'tune_vit_s14.json', 'benchmarks/tune_vit_s14.sh'
    result = load(name)
    if result is None:
        return missing(command)
    config = result['config']
    target = (f"speed-up >= x{config['target_speedup']:g}" if config.get('target_speedup') is not None
              else f"{result['metric']} >= {config['target_agreement']:g}")
    lines = [f"Agreement is {result['metric']} against the unmodified model on {result['num_images']} "
             f"photos; target: {target}. The front, fastest first:", '',
             '| setting | GFLOPs | speed-up | agreement |', '|---|---|---|---|']
    points = {p['label']: p for p in result['points']}
    front = sorted((points[label] for label in result['front']), key=lambda p: -p['speedup'])
    for p in front:
        mark = ' **(chosen)**' if p['label'] == result['chosen'] else ''
        lines.append(f"| `{p['label']}`{mark} | {p['gflops']:.2f} | {fmt_ratio(p['speedup'])} | "
                     f"{p['agreement']:.3f} |")
    measured = sum(p.get('agreement') is not None for p in result['points'])
    lines += ['', f"{len(result['points'])} points searched, {measured} measured for agreement; "
              f"chosen: `{result['chosen']}` ({result['why']})."]
    return '\n'.join(lines) + '\n' + source(name, result, command)


# Table name -> renderer of its body for the document it sits in (links are relative to it).
RENDERERS: Dict[str, Callable[[Path], str]] = {
    'results': render_results,
    'presets': render_presets,
    'presets:front': render_preset_fronts,
    'cost': render_cost,
    'tune': render_tune,
    'compiled:hosts': render_compiled_hosts,
    'compiled:pareto': render_compiled_pareto,
    'compiled:cost': render_compiled_cost,
    **{f'pareto:{run}': functools.partial(render_pareto, run) for run in RUNS},
    **{f'hosts:{host}': functools.partial(render_host, host) for host in HOSTS},
    **{f'configs:{family}': functools.partial(render_configs, family)
       for family in ('segmenter', 'dpt', 'dino', 'mmpretrain')},
}


def documents() -> List[Path]:
    return [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md')), *sorted(ROOT.glob('configs/*/README.md'))]


def render_text(text: str, doc: Path) -> str:
    """``text`` (the document ``doc``) with every table block rendered anew."""
    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in RENDERERS:
            where = doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc
            raise SystemExit(f'render: error: {where}: unknown table {name!r}; '
                             f'known: {", ".join(RENDERERS)}')
        return match.group(1) + RENDERERS[name](doc) + match.group(4)
    return BLOCK.sub(fill, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='change nothing; exit 1 if a block is stale')
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        if not path.is_file():
            continue
        text = path.read_text()
        rendered = render_text(text, path)
        if rendered != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(rendered)
    if args.check and stale:
        print(f'render: stale tables in {", ".join(stale)}; run python benchmarks/render.py', file=sys.stderr)
        return 1
    print(('rewrote ' + ', '.join(stale)) if stale and not args.check else 'tables up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
