"""Supported versions of the libraries mmtt builds on, checked at import time."""
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

# package -> (lowest supported, first unsupported); checked only when installed.
SUPPORTED = {
    'torch': ('2.1.0', '3.0.0'),
    'mmengine': ('0.10.0', '1.0.0'),
    'mmcv': ('2.0.0', '2.2.0'),
    'mmsegmentation': ('1.2.0', '1.3.0'),
    'mmdet': ('3.3.0', '3.4.0'),
    'timm': ('1.0.0', '2.0.0'),
}


def check_versions() -> None:
    """Raise ``ImportError`` naming what is installed and what is supported, if out of range."""
    problems = []
    for package, (low, high) in SUPPORTED.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue
        release = Version(Version(installed).base_version)
        if not Version(low) <= release < Version(high):
            problems.append(f'{package} {installed} is installed; mmtt supports {package}>={low},<{high}')
    if problems:
        raise ImportError('mmtt cannot run with the installed libraries:\n  ' + '\n  '.join(problems)
                          + '\n(tools/setup_env.sh installs a supported set)')
