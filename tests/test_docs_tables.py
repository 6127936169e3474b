"""The measured tables of README.md, docs/ and configs/*/README.md are what benchmarks/render.py
renders from the committed results: one figure, one value."""
import importlib.util
import json

import pytest
from tiny_seg import REPO


def load_render():
    spec = importlib.util.spec_from_file_location('render', REPO / 'benchmarks' / 'render.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_equal_the_rendered_ones(capsys):
    assert load_render().main(['--check']) == 0, capsys.readouterr().err


def test_every_marker_names_a_known_table_and_every_result_is_shown():
    render = load_render()
    shown = set()
    for doc in render.documents():
        for match in render.BLOCK.finditer(doc.read_text()):
            assert match.group(2) in render.RENDERERS, (doc, match.group(2))
            shown.add(match.group(2))
    for result in (REPO / 'benchmarks' / 'results').glob('*.json'):
        name = result.stem
        table = {'reduction_cost': 'cost', 'tune_vit_s14': 'tune'}.get(name, name.replace('pareto_vit_s14_', 'pareto:')
                                                   .replace('hosts_', 'hosts:'))
        assert table in shown, f'{result.name} is rendered nowhere'


def point(label, keep, iou, speed):
    return dict(label=label, keep_ratio=keep, iou=iou, iou_min=iou - 0.1, speedup_b1=speed,
                speedup_batch=speed + 0.01, gflops=10.0 * keep, latency_ms=100.0 / speed,
                latency_ms_rounds=[100.0 / speed] * 4)


def test_a_stale_table_is_rewritten_from_the_result(tmp_path, monkeypatch):
    render = load_render()
    monkeypatch.setattr(render, 'RESULTS', tmp_path)
    result = dict(config=dict(batch=4), num_images=2, provenance=dict(hardware='cpu', commit='abc'),
                  points=[point('unmodified', 1.0, 1.0, 1.0), point('fast', 0.7, 0.9512, 1.4321),
                          point('tome', 0.7, 0.9, 1.5)],
                  equal_speed=[dict(label='tome', keep_ratio=0.7, margin=None, interpolated_margin=-0.02)])
    (tmp_path / 'pareto_vit_s14_fp32.json').write_text(json.dumps(result))
    doc = tmp_path / 'page.md'
    stale = 'intro\n<!-- mmtt:table pareto:fp32 -->\n| old | 0.999 |\n<!-- mmtt:end -->\noutro\n'
    doc.write_text(stale)
    text = render.render_text(stale, doc)
    assert text.startswith('intro\n<!-- mmtt:table pareto:fp32 -->\n') and text.endswith('<!-- mmtt:end -->\noutro\n')
    assert '0.999' not in text
    assert "| `preset='fast'` | 0.951 / x1.43 / x1.44 | 7.00 |" in text
    assert 'ToMe (keys) at keep 0.7 (-0.020 IoU)' in text
    assert render.render_text(text, doc) == text   # rendering is a fixed point


def test_an_unknown_table_or_a_missing_result_is_named(tmp_path, monkeypatch):
    render = load_render()
    monkeypatch.setattr(render, 'RESULTS', tmp_path)
    doc = tmp_path / 'page.md'
    with pytest.raises(SystemExit, match="unknown table 'pareto:fp64'"):
        render.render_text('<!-- mmtt:table pareto:fp64 -->\n<!-- mmtt:end -->', doc)
    text = render.render_text('<!-- mmtt:table hosts:dino -->\n<!-- mmtt:end -->', doc)
    assert 'Not measured: run `benchmarks/hosts.sh dino`' in text
