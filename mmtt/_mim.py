"""Lets MMEngine resolve ``mmtt::`` config bases.

MMEngine 0.10 resolves ``pkg::path`` only for packages in its hard-coded ``MODULE2PACKAGE``
table and only for paths with a folder (``mmdet::dino/x.py``). mmtt adds itself to the table
and accepts its top-level configs (``mmtt::segmenter_tt_ade20k.py``) too. This runs on
``import mmtt``, so a script must import mmtt before parsing such a config: mmtt's tools
(``python -m mmtt.tools.test``) do.
"""
import re

import mmengine.config.config as mmengine_config
import mmengine.config.utils as mmengine_config_utils

_original = mmengine_config_utils._get_package_and_cfg_path


def _get_package_and_cfg_path(cfg_path: str):
    if re.match(r'mmtt::[\w.-]+\.py$', cfg_path):
        return 'mmtt', cfg_path.partition('::')[2]
    return _original(cfg_path)


def register() -> None:
    mmengine_config_utils.MODULE2PACKAGE.setdefault('mmtt', 'mmtt')
    mmengine_config_utils._get_package_and_cfg_path = _get_package_and_cfg_path
    mmengine_config._get_package_and_cfg_path = _get_package_and_cfg_path
