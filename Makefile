# Fresh-machine entry points. Everything installs into .venv from this repository's own files.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.mmke-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# One resolve with torch pinned: here it is the local CPU wheel (PyPI's default is the multi-GB
	# CUDA build), and lmms-eval's torchvision is then chosen to match it instead of upgrading it.
	$(PIP) install "$(TORCH_SPEC)" -e ".[test]"
	# lmms-eval pulls a torchvision that cannot load beside the CPU torch; nothing here needs it.
	$(VENV)/bin/pip uninstall -y -q torchvision || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmke-eval --tasks mmke_mini --editor none,ft_llm,ft_alignment,ike --output_path out/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/edit_throughput.py
