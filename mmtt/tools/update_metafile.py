"""Regenerate the OpenMMLab metafiles (model-index.yml, configs/*/metafile.yml) from the configs.

GFLOPs are measured with mmtt's counter (:func:`mmtt.analysis.config_flops`, as
tools/get_flops.py), unmodified and with mmtt, at each config's test crop size. Run after adding
or changing a config:

    python tools/update_metafile.py        # or: python -m mmtt.tools.update_metafile

It rewrites the checkout's files; in an installed package without a checkout, those under
``mmtt/.mim/`` (the same layout).
"""
import argparse
import os
import os.path as osp
from glob import glob

import yaml
from mmengine.config import Config
from tqdm import tqdm

from mmtt.analysis import config_flops, default_shape, unmodified


def _root() -> str:
    """The folder holding ``configs/`` and ``model-index.yml``: the checkout, else ``mmtt/.mim``."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    checkout = osp.dirname(package)
    return checkout if osp.isdir(osp.join(checkout, 'configs')) else osp.join(package, '.mim')


ROOT = _root()
PAPER = dict(Title='Token Transforming: A Unified and Training-Free Token Compression Framework '
                   'for Vision Transformer Acceleration (Zeng, Yu, Kong, Tang)')
# family -> (metafile folder, collection, task, dataset, upstream config, upstream weights); a
# config belongs to the first family whose key its name contains.
FAMILIES = {
    'ade20k': ('segmenter', 'Segmenter-L + mmtt', 'Semantic Segmentation', 'ADE20K',
               'mmseg::segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py',
               'https://download.openmmlab.com/mmsegmentation/v0.5/segmenter/'
               'segmenter_vit-l_mask_8x1_512x512_160k_ade20k/'
               'segmenter_vit-l_mask_8x1_512x512_160k_ade20k_20220105_162750-7ef345be.pth'),
    'coco_36e': ('dino', 'DINO Swin-L + mmtt', 'Object Detection', 'COCO',
                 'mmdet::dino/dino-5scale_swin-l_8xb2-36e_coco.py',
                 'https://github.com/RistoranteRist/mmlab-weights/releases/download/dino-swinl/'
                 'dino-5scale_swin-l_8xb2-36e_coco-5486e051.pth'),
    'coco': ('dino', 'DINO Swin-L + mmtt', 'Object Detection', 'COCO',
             'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
             'https://download.openmmlab.com/mmdetection/v3.0/dino/dino-5scale_swin-l_8xb2-12e_coco/'
             'dino-5scale_swin-l_8xb2-12e_coco_20230228_072924-a654145f.pth'),
    'nyu': ('dpt', 'DPT-Hybrid + mmtt', 'Depth Estimation', 'NYUv2',
            'composed from mmseg parts (mmseg::_base_/datasets/nyu.py)', None),
    'cityscapes': ('segmenter', 'Segmenter-L + mmtt', 'Semantic Segmentation', 'Cityscapes',
                   'composed from mmseg parts (configs/segmenter/segmenter_tt_cityscapes.py)', None),
}


# Metafile folders kept as written by hand (each model has its own upstream config and weights,
# which FAMILIES cannot express); regenerating leaves them and lists them in model-index.yml.
HAND_WRITTEN = ('mmpretrain',)


def family_of(name: str):
    for key, family in FAMILIES.items():
        if key in name:
            return family
    raise ValueError(f'no metafile family for config {name}; add it to FAMILIES')


def describe(path: str) -> dict:
    rel = osp.relpath(path, ROOT)
    name = osp.splitext(osp.basename(path))[0]
    cfg = Config.fromfile(path)
    folder, collection, task, dataset, upstream, weights = family_of(name)
    backbone = cfg.model.backbone
    shape = default_shape(cfg)
    full = config_flops(unmodified(cfg), shape)
    reduced = config_flops(cfg, shape)
    transform = backbone.get('token_transform') or dict(method='none', keep_ratio=1.0)
    return folder, {
        'Name': name,
        'In Collection': collection,
        'Config': rel,
        'Metadata': {
            'Upstream Config': upstream,
            'Method': transform['method'],
            'Keep Ratio': 1.0 if not backbone.reduce_layers else round(transform.get(
                'keep_ratio',
                (backbone.get('reduced_window_size', 1) / backbone.get('window_size', 1)) ** 2), 4),
            'Reduce Layers': list(backbone.reduce_layers),
            'Input': f'{shape[0]}x{shape[1]}',
            'GFLOPs (unmodified)': round(full.gflops, 1),
            'GFLOPs': round(reduced.gflops, 1),
            'Training Free': True,
        },
        'Results': [{'Task': task, 'Dataset': dataset, 'Metrics': {}}],
        'Weights': weights,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', nargs='+', metavar='FOLDER',
                        help='regenerate only these metafile folders (e.g. dino); keep the others')
    args = parser.parse_args(argv)
    # configs/*/: the families; the flagship files at the top of configs/ only inherit one of them.
    paths = sorted(glob(osp.join(ROOT, 'configs', '*', '*.py')))
    paths = [p for p in paths if osp.basename(osp.dirname(p)) not in HAND_WRITTEN]
    if args.only:
        paths = [p for p in paths if family_of(osp.splitext(osp.basename(p))[0])[0] in args.only]
    families = {}
    for path in tqdm(paths):
        folder, entry = describe(path)
        families.setdefault(folder, []).append(entry)
    for folder, models in sorted(families.items()):
        metafile = osp.join('configs', folder, 'metafile.yml')
        os.makedirs(osp.join(ROOT, 'configs', folder), exist_ok=True)
        collections = sorted({m['In Collection'] for m in models})
        with open(osp.join(ROOT, metafile), 'w') as f:
            yaml.safe_dump({'Collections': [{'Name': c, 'Paper': PAPER} for c in collections],
                            'Models': models}, f, sort_keys=False)
    imports = sorted(osp.relpath(p, ROOT) for p in glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')))
    with open(osp.join(ROOT, 'model-index.yml'), 'w') as f:
        yaml.safe_dump({'Import': imports}, f, sort_keys=False)
    print('wrote', ', '.join(sorted(families)), 'metafiles and model-index.yml; kept the '
          'hand-written', ', '.join(HAND_WRITTEN), 'metafile(s)')


if __name__ == '__main__':
    main()
