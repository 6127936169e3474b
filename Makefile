# Quick start: `make demo` sets up the light .venv/ (torch, timm and the real ViT-S/14; no mmcv,
# a minute or two on a fresh machine) and runs tools/demo.py; `make test` sets up the whole stack
# (about 15 minutes until mmcv, compiled once per machine, is cached) and runs the tests.
# Each set-up takes seconds when current; a full .venv/ also serves `make demo`.
# MMTT_VENV (default .venv) and MMTT_CACHE are read by tools/setup_env.sh as well.
VENV := $(or $(MMTT_VENV),.venv)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-demo demo test lint
setup:
	bash tools/setup_env.sh

setup-demo:
	bash tools/setup_env.sh demo

demo: setup-demo
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# ruff (pinned by the set-up; rules and line length in ruff.toml): pyflakes, pycodestyle, import order.
lint: setup
	$(VENV)/bin/ruff check .
