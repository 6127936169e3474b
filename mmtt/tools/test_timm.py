"""Top-1/top-5 of a timm classifier on an ImageNet-style folder, unmodified and with mmtt.

    python tools/test_timm.py --model deit_small_patch16_224 --checkpoint deit_s.pth \\
        --data /data/imagenet/val --schedule deit-s/0.7

The folder holds one sub-folder per class, named so that their sorted order is the class
index order (ImageNet's synset folders are). The checkpoint is a plain state dict (or a dict
with 'state_dict'/'model'), loaded strictly: the patch adds no parameters.
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from tqdm import tqdm

from mmtt.checkpoint import allow_openmmlab_checkpoints
from mmtt.hosts.timm import SCHEDULES, apply_patch
from mmtt.modules import METHODS
from mmtt.modules.presets import PRESETS

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.webp'}


def list_samples(root: str) -> List[Tuple[Path, int]]:
    if not Path(root).is_dir():
        raise ValueError(f'--data {root}: not a folder; it needs one sub-folder per class')
    classes = sorted(p for p in Path(root).iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f'--data {root}: no class sub-folders found')
    samples = [(f, label) for label, folder in enumerate(classes) for f in sorted(folder.iterdir())
               if f.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise ValueError(f'--data {root}: no images in its class sub-folders')
    return samples


def load_model(name: str, checkpoint: Optional[str]) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=False)
    if checkpoint:
        allow_openmmlab_checkpoints()
        state = torch.load(checkpoint, map_location='cpu')
        for key in ('state_dict', 'model'):
            if isinstance(state, dict) and key in state:
                state = state[key]
        model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def evaluate(model, samples, transform, batch_size: int, device, desc: str) -> Dict[str, float]:
    correct1 = correct5 = 0
    for start in tqdm(range(0, len(samples), batch_size), desc=desc):
        batch = samples[start:start + batch_size]
        images = torch.stack([transform(Image.open(p).convert('RGB')) for p, _ in batch]).to(device)
        labels = torch.tensor([label for _, label in batch], device=device)
        top5 = model(images).topk(min(5, model.num_classes), dim=1).indices
        correct1 += (top5[:, 0] == labels).sum().item()
        correct5 += (top5 == labels[:, None]).any(dim=1).sum().item()
    return dict(top1=100.0 * correct1 / len(samples), top5=100.0 * correct5 / len(samples))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, help='timm model name')
    parser.add_argument('--checkpoint', help='local weights file (state dict)')
    parser.add_argument('--data', required=True, help='folder with one sub-folder per class')
    parser.add_argument('--method', default=None, choices=METHODS, help='default: transform')
    parser.add_argument('--keep-ratio', type=float, default=0.7)
    parser.add_argument('--layers', type=int, nargs='+', default=[3, 6, 9])
    parser.add_argument('--schedule', choices=sorted(SCHEDULES), help='overrides --keep-ratio/--layers')
    parser.add_argument('--preset', choices=sorted(PRESETS),
                        help='Token Transforming setting (default: the paper\'s)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--skip-unmodified', action='store_true', help='evaluate only with mmtt')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    args = parse_args(argv)
    samples = list_samples(args.data)
    model = load_model(args.model, args.checkpoint).to(args.device)
    transform = create_transform(**resolve_data_config({}, model=model))
    results = {}
    if not args.skip_unmodified:
        results['unmodified'] = evaluate(model, samples, transform, args.batch_size, args.device,
                                         'unmodified')
    apply_patch(model, method=args.method, keep_ratio=args.keep_ratio, layers=args.layers,
                preset=args.preset, schedule=args.schedule)
    results['mmtt'] = evaluate(model, samples, transform, args.batch_size, args.device, 'mmtt')
    print(f'{args.model} on {len(samples)} images of {args.data}')
    for name, r in results.items():
        print(f'  {name:<11} top-1 {r["top1"]:6.2f}  top-5 {r["top5"]:6.2f}')
    return results


if __name__ == '__main__':
    main()
