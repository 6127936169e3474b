"""Command-line tools, also reachable as ``python -m mmtt.tools.<name>`` without a checkout."""
