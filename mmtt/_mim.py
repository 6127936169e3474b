"""Lets MMEngine resolve ``mmtt::`` config bases once mmtt is imported (see :mod:`mmtt._mim_hook`
for the start-up hook that does the same without an import)."""
import mmengine.config.config as mmengine_config
import mmengine.config.utils as mmengine_config_utils

from ._mim_hook import patch_config_utils


def register() -> None:
    patch_config_utils(mmengine_config_utils)
    # mmengine.config.config bound the function by name when it was imported.
    mmengine_config._get_package_and_cfg_path = mmengine_config_utils._get_package_and_cfg_path
