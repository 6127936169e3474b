"""Resolution of ``mmtt::`` config bases inside MMEngine, also for scripts that never import mmtt.

MMEngine 0.10 resolves ``pkg::folder/file.py`` (``mmtt::segmenter/segmenter_tt_ade20k.py``)
itself, but only for packages in its hard-coded ``MODULE2PACKAGE`` table;
:func:`patch_config_utils` adds mmtt to it.

Two ways in: ``import mmtt`` applies it (:mod:`mmtt._mim`), and a wheel install of mmtt also
installs this file as the top-level module ``_mmtt_mim_hook`` with a ``.pth`` line that runs
:func:`install` at interpreter start-up. That only puts a finder on ``sys.meta_path`` which
waits for ``mmengine.config.utils`` to be imported and patches it right after it executes; so
mmseg's or mmdet's own ``tools/test.py`` can parse a config whose ``_base_`` is an ``mmtt::``
config. Standard library only: nothing else is imported at start-up.
"""
import sys
from importlib.abc import MetaPathFinder

CONFIG_UTILS = 'mmengine.config.utils'


def patch_config_utils(utils) -> None:
    """Make the module ``mmengine.config.utils`` resolve ``mmtt::`` bases (idempotent).

    Besides the package table: MMEngine accepts only ``pkg::folder/file.py``, while mmtt's
    flagship configs sit at the top of ``configs/`` (``mmtt::segmenter_tt_ade20k.py``); and it
    looks for an installed package's configs beside the distribution's location, which for an
    editable install is not where the ``mmtt`` package is.
    """
    utils.MODULE2PACKAGE.setdefault('mmtt', 'mmtt')
    upstream_split = utils._get_package_and_cfg_path
    if getattr(upstream_split, 'mmtt', False):
        return

    def get_package_and_cfg_path(cfg_path: str):
        package, _, relative = cfg_path.partition('::')
        if package == 'mmtt' and relative and '/' not in relative:
            return 'mmtt', relative
        return upstream_split(cfg_path)

    get_package_and_cfg_path.mmtt = True
    utils._get_package_and_cfg_path = get_package_and_cfg_path
    # mmengine.config.config binds both names when it is imported: patch them where it reads them.
    for name in ('mmengine.utils', 'mmengine.utils.package_utils', 'mmengine.config.config'):
        module = sys.modules.get(name)
        if module is None:
            continue
        if name == 'mmengine.config.config':
            module._get_package_and_cfg_path = get_package_and_cfg_path
        if hasattr(module, 'get_installed_path'):
            module.get_installed_path = _installed_path(module.get_installed_path)


def _installed_path(upstream):
    """``get_installed_path`` that finds mmtt where Python imports it from (editable installs too)."""
    if getattr(upstream, 'mmtt', False):
        return upstream

    def get_installed_path(package: str) -> str:
        if package == 'mmtt':
            import importlib.util
            import os.path as osp
            spec = importlib.util.find_spec('mmtt')
            if spec is not None and spec.origin:
                return osp.dirname(spec.origin)
        return upstream(package)

    get_installed_path.mmtt = True
    return get_installed_path


class _ConfigUtilsFinder(MetaPathFinder):
    """Finds nothing itself: wraps the real loader of ``mmengine.config.utils``."""

    def find_spec(self, name, path, target=None):
        if name != CONFIG_UTILS:
            return None
        sys.meta_path.remove(self)   # one module to patch, once
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, 'find_spec') else None
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            patch_config_utils(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Patch ``mmengine.config.utils`` now if it is loaded, else as soon as it is imported."""
    if CONFIG_UTILS in sys.modules:
        patch_config_utils(sys.modules[CONFIG_UTILS])
    elif not any(isinstance(f, _ConfigUtilsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _ConfigUtilsFinder())
