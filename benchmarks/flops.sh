#!/usr/bin/env bash
# GFLOPs of every shipped config, unmodified and with mmtt (MMEngine's counter, the reduction's
# own ops included), written into the configs' metafiles (configs/*/metafile.yml).
# Usage: benchmarks/flops.sh [FOLDER ...]   (default: every family)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ $# -gt 0 ]; then $PY tools/update_metafile.py --only "$@"; else $PY tools/update_metafile.py; fi
