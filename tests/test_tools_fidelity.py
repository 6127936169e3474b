"""tools/fidelity.py and tools/visualize.py end to end on two real photographs, small size.

The photos come from scikit-image's data (a PyPI package), written to a temporary folder.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from mmtt.tools import fidelity

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def run_tool(name, *args):
    done = subprocess.run([sys.executable, str(ROOT / 'tools' / f'{name}.py'), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f'{name}.py failed:\n{done.stdout}\n{done.stderr}'
    return done.stdout


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    Image.fromarray(skimage.data.chelsea()).save(folder / 'chelsea.png')
    Image.fromarray(skimage.data.coffee()).save(folder / 'coffee.jpg')
    (folder / 'notes.txt').write_text('not an image')
    return folder


def test_fidelity_writes_json_and_png_with_metrics_in_range(photos, tmp_path):
    out_json, out_png = tmp_path / 'fid.json', tmp_path / 'fid.png'
    stdout = run_tool('fidelity', '--images', photos, '--size', 224, '--methods', 'transform', 'tome',
                      '--keep-ratios', 1.0, 0.7, '--out-json', out_json, '--out-png', out_png)
    result = json.loads(out_json.read_text())
    assert result['num_images'] == 2 and sorted(result['image_names']) == ['chelsea.png', 'coffee.jpg']
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    points = {(p['method'], p['keep_ratio']): p for p in result['points']}
    assert set(points) == {('transform', 1.0), ('transform', 0.7), ('tome', 1.0), ('tome', 0.7)}
    full = result['full']['gflops']
    for (method, keep), p in points.items():
        assert 0 <= p['iou_min'] <= p['iou'] <= 1 and 0 <= p['mae'] <= 1
        assert -1 <= p['patch_cos'] <= 1 and -1 <= p['cls_cos'] <= 1
        assert len(p['per_image']['iou']) == 2
        if keep == 1.0:     # an exact no-op: the unmodified model's outputs, bit for bit
            assert p['iou'] == 1.0 and p['mae'] == 0.0 and p['gflops'] == full
        else:
            assert p['gflops'] < 0.85 * full and p['mae'] > 0
            assert p['iou'] > 0.5 and p['patch_cos'] > 0.8
    assert 'transform' in stdout and 'GFLOPs' in stdout


def test_fidelity_reports_unreachable_points_and_bad_arguments(photos, tmp_path):
    with pytest.raises(FileNotFoundError, match='--images'):
        fidelity.list_images(tmp_path / 'missing', None)
    with pytest.raises(FileNotFoundError, match='no .*files'):
        fidelity.list_images(tmp_path, None)
    with pytest.raises(ValueError, match='--limit 0'):
        fidelity.list_images(photos, 0)
    assert [p.name for p in fidelity.list_images(photos, 1)] == ['chelsea.png']
    with pytest.raises(SystemExit):
        fidelity.parse_args(['--images', str(photos), '--keep-ratios', '1.5'])
    with pytest.raises(SystemExit):
        fidelity.parse_args(['--images', str(photos), '--size', '225'])


def test_visualize_draws_w_rows_and_counts_shared_tokens(photos, tmp_path):
    out = tmp_path / 'fig5.png'
    stdout = run_tool('visualize', '--image', photos / 'chelsea.png', '--size', 224, '--rows', 3,
                      '--out', out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    # "N of 256 tokens (P%) feed >= 2 informative tokens": the many-to-many property, measured.
    line = next(s for s in stdout.splitlines() if 'feed >= 2 informative tokens' in s)
    shared, total = int(line.split()[0]), int(line.split()[2])
    assert total == 256 and 0 < shared < total
