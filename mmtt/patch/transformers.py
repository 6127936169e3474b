"""The transformers host under the import path of mmtt 0.2: this module is :mod:`mmtt.hosts.transformers`."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('mmtt.hosts.transformers')
