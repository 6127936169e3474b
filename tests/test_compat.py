"""Versions are checked per host: a host outside its supported range stops only its own use."""
import subprocess
import sys

import pytest

from mmtt import compat

# Runs in a fresh interpreter in which importlib.metadata reports mmdet 9.0.0.
FAKE_MMDET = """
import importlib.metadata as metadata
real = metadata.version
metadata.version = lambda package: '9.0.0' if package == 'mmdet' else real(package)
import sys
import mmtt, mmtt.hosts.timm
from mmseg.registry import MODELS
assert MODELS.get('TokenVisionTransformer') is not None   # the supported host registered
assert 'mmtt.hosts.mmdet' not in sys.modules     # the unsupported one was skipped
try:
    import mmtt.hosts.mmdet
except ImportError as e:
    print(e)
"""


def test_an_unsupported_host_does_not_stop_the_others():
    proc = subprocess.run([sys.executable, '-c', FAKE_MMDET], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'mmdet 9.0.0 is installed; mmtt supports mmdet>=3.3.0,<3.4.0' in proc.stdout


def test_check_versions_names_the_package_and_the_range(monkeypatch):
    monkeypatch.setattr(compat, 'version', lambda package: '0.1.0' if package == 'timm' else '2.5.0')
    assert compat.version_problems('timm') == ['timm 0.1.0 is installed; mmtt supports timm>=1.0.26,<2.0.0']
    assert not compat.host_supported('timm')
    with pytest.raises(ImportError, match='timm 0.1.0 is installed'):
        compat.check_versions('timm')
    compat.check_versions('torch')   # 2.5.0 is in range


def test_timm_before_the_blocks_take_attn_mask_is_refused(monkeypatch):
    # timm 1.0.25's Block.forward has no attn_mask / is_causal, which the patched blocks hand on.
    monkeypatch.setattr(compat, 'version', lambda package: '1.0.25' if package == 'timm' else '2.5.0')
    assert compat.version_problems('timm') == ['timm 1.0.25 is installed; mmtt supports timm>=1.0.26,<2.0.0']
    monkeypatch.setattr(compat, 'version', lambda package: '1.0.26' if package == 'timm' else '2.5.0')
    assert compat.version_problems('timm') == []


def test_every_lowest_supported_version_but_torchs_is_one_the_tests_run():
    """The floors of compat.SUPPORTED are versions a test environment installs (.venv/ or
    .venv-hf/, tools/setup_env.sh): the pins of the set-up, timm's floor in .venv-hf/. torch's
    floor is wider: only torch 2.13.0 is installable where the tests run."""
    import re
    from pathlib import Path
    setup = (Path(__file__).parents[1] / 'tools' / 'setup_env.sh').read_text()
    pinned = set(re.findall(r'([A-Za-z][\w.-]*)==([\d.]+)', setup))
    for package, ranges in compat.SUPPORTED.items():
        ranges = (ranges,) if isinstance(ranges[0], str) else ranges
        if package == 'torch':
            continue
        for low, _ in ranges:
            assert (package, low) in pinned, f'{package}>={low} is not installed by any set-up'
