# Two entry points: `make demo` (install, generate the demo data, run the demo row, write reports/) and
# `make test` (install, run the test suite). Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROWS ?= demo

.PHONY: install demo test benchmarks lab tensorboard clean-reports

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so that nothing later resolves another build.
	$(PY) -m pip install --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m pointrend_core.workbook run --rows $(ROWS)

# One worker per core, whole files per worker (module fixtures are built once); tests/conftest.py gives each
# worker one thread.
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

benchmarks: install
	$(PY) benchmarks/inference.py --sizes 512x512
	$(PY) benchmarks/data.py
	$(PY) benchmarks/train.py

# Containers often run as root, where JupyterLab refuses to start without --allow-root.
lab: install
	$(VENV)/bin/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

# Training curves of one run (or of every run: RUN=runs) while it trains: http://localhost:6006
RUN ?= runs
tensorboard: install
	$(VENV)/bin/tensorboard --logdir $(RUN) --host 127.0.0.1

clean-reports:
	rm -rf reports/*.html runs/
