# Quick start: `make demo` and `make test` each set up .venv/ first (seconds when it is current).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test lint
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# ruff (pinned by the set-up; rules and line length in ruff.toml): pyflakes, pycodestyle, import order.
lint: setup
	.venv/bin/ruff check .
