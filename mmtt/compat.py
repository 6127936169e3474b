"""Supported versions of the libraries mmtt builds on, checked per host when it is used."""
from importlib.metadata import PackageNotFoundError, version
from typing import List

from packaging.version import Version

# package -> (lowest supported, first unsupported), or a tuple of such ranges; checked only
# when installed.
SUPPORTED = {
    'torch': ('2.1.0', '3.0.0'),
    'mmengine': ('0.10.7', '1.0.0'),
    'mmcv': ('2.1.0', '2.2.0'),
    'mmsegmentation': ('1.2.2', '1.3.0'),
    'mmdet': ('3.3.0', '3.4.0'),
    # 1.0.26: the first release whose Block.forward takes attn_mask and is_causal (tested in
    # .venv-hf/, beside 1.0.31 in .venv/).
    'timm': ('1.0.26', '2.0.0'),
    'mmpretrain': ('1.2.0', '1.3.0'),
    'tlt': ('0.2.0', '0.3.0'),
    # The two lines mmtt.hosts.transformers is tested with: 4.51 (beside mmpretrain 1.2, whose
    # multimodal models need modeling_utils names 4.52 dropped) and 5.x from 5.25 (.venv-hf/).
    'transformers': (('4.51.3', '4.52.0'), ('5.25.0', '6.0.0')),
}
# What each part of mmtt needs: the core on import, a host's module when it is imported.
CORE = ('torch', 'mmengine')
HOSTS = {
    'timm': ('timm',),
    'mmseg': ('mmsegmentation', 'mmcv'),
    'mmdet': ('mmdet', 'mmcv'),
    'mmpretrain': ('mmpretrain', 'mmcv'),
    'lvvit': ('tlt', 'timm'),
    'transformers': ('transformers',),
}


def version_problems(*packages: str) -> List[str]:
    """One line per installed package of ``packages`` outside its supported range."""
    problems = []
    for package in packages:
        ranges = SUPPORTED[package]
        ranges = (ranges,) if isinstance(ranges[0], str) else ranges
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue
        release = Version(Version(installed).base_version)
        if not any(Version(low) <= release < Version(high) for low, high in ranges):
            supported = ' or '.join(f'{package}>={low},<{high}' for low, high in ranges)
            problems.append(f'{package} {installed} is installed; mmtt supports {supported}')
    return problems


def check_versions(*packages: str) -> None:
    """Raise ``ImportError`` naming what is installed and what is supported, if out of range.
    Without arguments: the core (torch, mmengine)."""
    problems = version_problems(*(packages or CORE))
    if problems:
        raise ImportError('mmtt cannot run with the installed libraries:\n  ' + '\n  '.join(problems)
                          + '\n(tools/setup_env.sh installs a supported set)')


def host_supported(host: str) -> bool:
    """Whether ``host`` (a key of :data:`HOSTS`) is installed in a supported version."""
    from importlib.util import find_spec
    module = {'mmseg': 'mmseg', 'mmdet': 'mmdet', 'timm': 'timm', 'mmpretrain': 'mmpretrain',
              'lvvit': 'tlt', 'transformers': 'transformers'}[host]
    return find_spec(module) is not None and not version_problems(*HOSTS[host])
