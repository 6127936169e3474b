# Quick start: `make demo` sets up the light .venv/ (torch, timm and the real ViT-S/14; no mmcv,
# a minute or two on a fresh machine) and runs tools/demo.py; `make test` sets up the whole stack
# (about 15 minutes until mmcv, compiled once per machine, is cached) and runs the tests.
# Each set-up takes seconds when current; a full .venv/ also serves `make demo`. `make test` also
# sets up .venv-hf/ (transformers 5, no OpenMMLab hosts) and runs the transformers host's tests there.
# MMTT_VENV (default .venv) and MMTT_CACHE are read by tools/setup_env.sh as well.
VENV := $(or $(MMTT_VENV),.venv)
PY := $(VENV)/bin/python
# The second environment (transformers 5, timm 1.0.26; tools/setup_env.sh hf) runs the Hugging Face
# host's tests and the timm host's at the lowest supported timm.
HF_VENV := $(or $(MMTT_HF_VENV),$(VENV)-hf)
HF_TESTS := tests/test_transformers.py tests/test_visual_tokens.py tests/test_llava_benchmark.py tests/test_timm_patch.py
PYTEST_ARGS ?=

.PHONY: setup setup-demo setup-hf demo test test-hf lint
setup:
	bash tools/setup_env.sh

setup-hf:
	MMTT_HF_VENV=$(HF_VENV) bash tools/setup_env.sh hf

setup-demo:
	bash tools/setup_env.sh demo

demo: setup-demo
	$(PY) tools/demo.py

test: setup setup-hf
	$(PY) -m pytest tests $(PYTEST_ARGS)
	$(HF_VENV)/bin/python -m pytest $(HF_TESTS) $(PYTEST_ARGS)

test-hf: setup-hf
	$(HF_VENV)/bin/python -m pytest $(HF_TESTS) $(PYTEST_ARGS)

# ruff (pinned by the set-up; rules and line length in ruff.toml): pyflakes, pycodestyle, import order.
lint: setup
	$(VENV)/bin/ruff check .
