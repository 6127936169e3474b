"""Lets MMEngine resolve ``mmtt::`` config bases once mmtt is imported (see :mod:`mmtt._mim_hook`
for the start-up hook that does the same without an import)."""
import mmengine.config.utils as mmengine_config_utils

from ._mim_hook import patch_config_utils


def register() -> None:
    patch_config_utils(mmengine_config_utils)
