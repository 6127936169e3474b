"""tools/test_timm.py on a folder of images the test writes."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_folder_evaluation_with_and_without_the_patch(tmp_path):
    rng = np.random.default_rng(0)
    for label in ('a_class', 'b_class', 'c_class'):
        (tmp_path / 'val' / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(
                tmp_path / 'val' / label / f'{i}.jpg')
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=1000)
    torch.save(model.state_dict(), tmp_path / 'vit_tiny.pth')
    out = subprocess.run(
        [sys.executable, str(REPO / 'tools/test_timm.py'), '--model', 'vit_tiny_patch16_224',
         '--checkpoint', str(tmp_path / 'vit_tiny.pth'), '--data', str(tmp_path / 'val'),
         '--keep-ratio', '1.0', '--batch-size', '4'],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {name: (float(t1), float(t5)) for name, t1, t5 in
            re.findall(r'(unmodified|mmtt)\s+top-1\s+([\d.]+)\s+top-5\s+([\d.]+)', out.stdout)}
    assert set(rows) == {'unmodified', 'mmtt'}
    assert rows['unmodified'] == rows['mmtt']    # keep ratio 1 is the unmodified model
    assert all(0 <= t1 <= t5 <= 100 for t1, t5 in rows.values())
    bad = subprocess.run([sys.executable, str(REPO / 'tools/test_timm.py'), '--model', 'vit_tiny_patch16_224',
                          '--data', str(tmp_path / 'vit_tiny.pth')], capture_output=True, text=True)
    assert bad.returncode != 0 and '--data' in bad.stderr and 'not a folder' in bad.stderr
