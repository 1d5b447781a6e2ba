# Fresh-machine entry points. Everything installs into .venv from this repository's own files.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.mmke-installed
TORCH_SPEC ?= torch==2.13.0
# The tested versions of every dependency but torch/torchvision (refresh: `make lock`).
CONSTRAINTS := constraints.txt
LOCK_VENV := .lock-venv

.PHONY: install demo test test-wheel bench lock

$(STAMP): pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	# One resolve with torch pinned: here it is the local CPU wheel (PyPI's default is the multi-GB
	# CUDA build), and lmms-eval's torchvision is then chosen to match it instead of upgrading it.
	# The constraints hold everything else at the versions the suite last passed on.
	$(PIP) install -c $(CONSTRAINTS) "$(TORCH_SPEC)" -e ".[test]"
	# lmms-eval pulls a torchvision that cannot load beside the CPU torch; nothing here needs it.
	$(VENV)/bin/pip uninstall -y -q torchvision || true
	touch $(STAMP)

install: $(STAMP)

# One process per CPU core, at most 4 (docs/multi-process.md): each edits its share of the cases
# and process 0 writes the table, number for number the one-process table. One torch thread each.
DEMO_PROCS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node $(DEMO_PROCS) -m mmke_eval.cli \
		--tasks mmke_mini --editor none,ft_llm,ft_alignment,ike,serac,mend,ke --output_path out/demo

# Two workers, one test file each at a time (module fixtures stay shared within a file).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# The non-editable install as a user gets it: build the wheel, install it into a fresh venv that
# already holds torch and torchvision (they must be kept), run mmke-eval from another folder.
test-wheel: $(STAMP)
	MMKE_WHEEL_TEST=1 TORCH_SPEC="$(TORCH_SPEC)" $(PY) -m pytest -q tests/test_wheel_install.py

bench: $(STAMP)
	$(PY) benchmarks/edit_throughput.py

# Refresh constraints.txt: resolve the newest releases (no constraints) in a fresh venv, run the
# whole suite on them, and replace the file only if it passes.
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip -q --disable-pip-version-check install "$(TORCH_SPEC)" -e ".[test]"
	{ echo "# Tested versions of mmke-eval's dependencies (torch and torchvision excluded: install the"; \
	  echo "# build you want first). Written by \`make lock\` on $$(date -u +%Y-%m-%d) after the suite passed."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch|torchvision|triton|nvidia-|cuda-|mmke-eval)([=\[ ]|$$)'; \
	} > $(CONSTRAINTS).new
	$(LOCK_VENV)/bin/pip uninstall -y -q torchvision || true
	$(LOCK_VENV)/bin/python -m pytest -q
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	# Re-installs .venv from the new file on the next make target.
