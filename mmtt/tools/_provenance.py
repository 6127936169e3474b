"""What a benchmark result needs beside its figures: the machine, the library versions, the
commit and the command, so a table rendered from it can say where it came from."""
import datetime
import importlib.metadata as metadata
import os
import platform
import subprocess
import sys
from typing import Dict, Optional

import torch

LIBRARIES = ('torch', 'timm', 'mmengine', 'mmcv', 'mmsegmentation', 'mmdet', 'mmpretrain',
             'transformers', 'mmtt')


def describe_device(device: torch.device) -> str:
    """The device in words with the thread count (timings mean little without them)."""
    device = torch.device(device)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'{platform.processor() or platform.machine()} {device.type}')
    return f'{name}, {torch.get_num_threads()} CPU threads'


def versions() -> Dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def commit() -> Optional[str]:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it (None outside git)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ('+dirty' if dirty else '')


def provenance(device: torch.device, dtype: Optional[str] = None) -> dict:
    """Machine, versions, commit, command and date of a run, for its JSON result."""
    return dict(hardware=describe_device(device), machine=platform.machine(), python=platform.python_version(),
                versions=versions(), dtype=dtype, commit=commit(),
                command=' '.join([os.path.basename(sys.executable), *sys.argv]),
                date=datetime.date.today().isoformat())
