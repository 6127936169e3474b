"""ONNX export of patched timm ViTs with a dynamic batch, checked in ONNX Runtime.

The exporter is torch's TorchScript-based one (``dynamo=False`` with ``dynamic_axes``): torch
2.13's default (``dynamo=True``) needs ``onnxscript``, which mmtt does not depend on. It traces,
so the batch must reach every tensor through ``x.shape``, never a Python int, and every op
must have an ONNX form; the functional code takes trace-only forms where eager's has none
(``where`` for ``F.threshold``, ``scatter_add`` for ``index_add_``).
"""
import re
import warnings

import pytest
import timm
import torch

from mmtt.hosts.timm import apply_patch

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')

IMG = 64   # 16 patches: 16 -> 12 -> 9 tokens with keep 0.7 after blocks 0 and 1


def tiny_vit(**patch):
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=3, img_size=IMG,
                              embed_dim=48, num_heads=2).eval()
    return apply_patch(model, keep_ratio=0.7, layers=(0, 1), **patch)


class Features(torch.nn.Module):
    """``model.forward_features`` (or ``model`` itself: ``logits=True``) as a module to export."""

    def __init__(self, model: torch.nn.Module, logits: bool = False) -> None:
        super().__init__()
        self.model, self.logits = model, logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) if self.logits else self.model.forward_features(images)


def export(module: torch.nn.Module, path, batch: int = 2) -> 'ort.InferenceSession':
    """The documented command: export at one batch size, with the batch axis dynamic."""
    with warnings.catch_warnings():   # the legacy exporter's DeprecationWarning, TracerWarnings
        warnings.simplefilter('ignore')
        torch.onnx.export(module, (torch.randn(batch, 3, IMG, IMG),), str(path), dynamo=False,
                          input_names=['images'], output_names=['out'],
                          dynamic_axes={'images': {0: 'batch'}, 'out': {0: 'batch'}})
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def runs(session, module, batches=(1, 2, 3)):
    """``(onnxruntime output, eager output)`` at each batch size."""
    g = torch.Generator().manual_seed(1)
    for batch in batches:
        images = torch.randn(batch, 3, IMG, IMG, generator=g)
        with torch.no_grad():
            expected = module(images)
        yield torch.from_numpy(session.run(None, {'images': images.numpy()})[0]), expected


@pytest.mark.parametrize('recover', [False, True])
def test_dense_token_transforming_exports_with_a_dynamic_batch(tmp_path, recover):
    module = Features(tiny_vit(method='transform', recover=recover))
    session = export(module, tmp_path / 'tt.onnx')
    for got, expected in runs(session, module):
        assert got.shape == expected.shape == (expected.shape[0], 1 + (16 if recover else 8), 48)
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_classifier_exports_with_a_dynamic_batch(tmp_path):
    module = Features(tiny_vit(method='transform'), logits=True)
    session = export(module, tmp_path / 'tt_logits.onnx')
    for got, expected in runs(session, module):
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_patched_model_exports_directly(tmp_path):
    model = tiny_vit(method='transform')
    session = export(model, tmp_path / 'direct.onnx')
    for got, expected in runs(session, model):
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('patch', [dict(method='tome'), dict(method='tome', recover='assignment'),
                                   dict(method='evit'), dict(method='prune'),
                                   dict(method='transform', top_k=2, orphans='nearest'),
                                   dict(method='transform', selection='cls', recover='share'),
                                   dict(method='transform', score_stride=2)],
                         ids=lambda p: ','.join(f'{k}={v}' for k, v in p.items()))
def test_other_methods_export_with_a_dynamic_batch(tmp_path, patch):
    module = Features(tiny_vit(**patch))
    session = export(module, tmp_path / 'other.onnx')
    for got, expected in runs(session, module):
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('patch, named', [(dict(method='transform', top_k=2), "top_k with orphans='spread'"),
                                          (dict(method='transform', selection='mixed'), "selection='mixed'"),
                                          (dict(preset='fast'), "top_k with orphans='spread'")],
                         ids=['top_k-spread', 'mixed', 'fast'])
def test_tied_choices_are_refused_at_export_in_one_line(tmp_path, patch, named):
    """``top_k`` with ``orphans='spread'`` hands a column gated out entirely (all its logits 0)
    to k of M tied rows, and ``'mixed'`` ranks by a sum of two integer ranks; torch's and ONNX
    Runtime's TopK break such ties differently, so the exported model would compute other
    values than eager: the export stops with one line naming the setting."""
    module = Features(tiny_vit(**patch))
    with pytest.raises(ValueError, match=r'^ONNX export refused: ' + re.escape(named)):
        export(module, tmp_path / 'tied.onnx')


@pytest.mark.parametrize('method', ['transform', 'tome', 'evit', 'prune'])
def test_jit_trace_keeps_the_batch_dynamic(method):
    model = tiny_vit(method=method, recover=method == 'transform')
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(model, torch.randn(2, 3, IMG, IMG), check_trace=False)
        for batch in (1, 3):
            images = torch.randn(batch, 3, IMG, IMG)
            assert torch.allclose(traced(images), model(images), atol=1e-5, rtol=0)
