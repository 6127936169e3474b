"""Command-line tools, each a module with ``main(argv=None)``: ``python -m mmtt.tools.<name>``, the
``mmtt-<name>`` console script (underscores as hyphens) and, in a checkout, a thin
``tools/<name>.py``. What they share as a library lives in :mod:`mmtt.analysis` and :mod:`mmtt.vis`.
"""
