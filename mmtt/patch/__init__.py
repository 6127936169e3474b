"""``mmtt.patch.timm``, ``mmtt.patch.lvvit`` and ``mmtt.patch.transformers``: the host modules
under the import path of mmtt 0.2 (each is the module of :mod:`mmtt.hosts` of the same name)."""
