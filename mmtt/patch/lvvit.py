"""The lvvit host under the import path of mmtt 0.2: this module is :mod:`mmtt.hosts.lvvit`."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('mmtt.hosts.lvvit')
