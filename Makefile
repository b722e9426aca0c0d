# Two entry points for a fresh clone; each sets up what it needs first.
#   make demo   every method once on 10,000 Fashion-MNIST images, 3 epochs (offline, CPU, a few minutes); summary table
#   make test   the test suite: pytest tests/ (with and without the optional packages), then the notebooks (nbval);
#               installs Debian's postgresql first: tests/test_sweep_postgres.py runs a sweep on a throwaway server
#   make report re-render Pictures/ and the README tables from results/
#   make sweeps tune every method on validation F1 (protocol 2: the default first, 16 pruned trials of 15 epochs), before the study
#   make study  the stored full-profile study: notebooks 00-05 on Fashion-MNIST, outputs kept in notebooks/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist
APT    := DEBIAN_FRONTEND=noninteractive apt-get install -y

.PHONY: setup data postgres demo test test-suite test-suite-without report study study-ready sweeps lint

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $@

setup: $(VENV)/.installed

data:  # Debian's Fashion-MNIST: the offline dataset (CIFAR-10 needs the network)
	@[ -d $(FMNIST) ] || $(SUDO) apt-get install -y dataset-fashion-mnist \
	  || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

postgres:  # Debian's PostgreSQL server binaries (initdb, pg_ctl): the PostgreSQL sweep test starts its own server
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
	  || $(SUDO) $(APT) postgresql || ($(SUDO) apt-get update && $(SUDO) $(APT) postgresql)

demo: setup data
	$(PY) -m kd_utils run --experiment all --dataset fashion-mnist --train-size 10000 --epochs 3 --teacher-epochs 3 \
	  --hint-epochs 2 --checkpoint-dir runs/demo-checkpoints --results-path runs/demo.json --no-progress

# The two passes of the suite run side by side (each test process uses one thread, conftest.py), each with its own
# temporary folder; their outputs are printed whole as each finishes (-O). Then the notebooks, on both cores.
test: setup data postgres  # unit tests and, beside them, as without the optional packages; then every notebook (nbval)
	$(MAKE) --no-print-directory -j2 -O test-suite test-suite-without
	KD_PROFILE=smoke KD_DATASET=fashion-mnist KD_OUTPUT_DIR=$$(mktemp -d) \
	  $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks

test-suite:
	tmp=$$(mktemp -d); MPLBACKEND=Agg $(PY) -m pytest -q --durations=15 --basetemp=$$tmp/pytest tests; \
	  code=$$?; rm -rf $$tmp; exit $$code

test-suite-without:  # as on a machine without optuna, timm and tensorboard: their imports fail, their tests skip
	tmp=$$(mktemp -d); KD_TEST_WITHOUT=optuna,timm,tensorboard MPLBACKEND=Agg $(PY) -m pytest -q \
	  -p no:cacheprovider --basetemp=$$tmp/pytest tests; code=$$?; rm -rf $$tmp; exit $$code

# Each notebook is executed into checkpoints/notebooks/ (written when it finishes); one already there is not
# run again, so after an interruption `make study` goes on with the first unfinished notebook, which resumes
# its training from checkpoints/. The executed notebooks replace the committed ones only when all six ran.
STUDY_DONE := $(patsubst notebooks/%,checkpoints/notebooks/%,$(wildcard notebooks/0*.ipynb))

# Before the first notebook: `study check` must pass (every job of `study run` finished, the audit's checks), and
# protocol 1's records move to results/fashion-mnist/archive/ once, so that the notebooks' records are the re-run's.
# The move checks the file is protocol 1's (its SHA-256; tests/test_structure.py checks the constant), so that a
# clone without the archive never files the re-run's records under protocol 1's name.
ARCHIVED := results/fashion-mnist/archive/protocol-1-runs.json
PROTOCOL_1_SHA256 := 43755a9043ec11f05a93fd50d197275b25fc7fc8b913048037bcdaf8ab7f84ab

study-ready: | setup
	$(PY) -m kd_utils study check

$(ARCHIVED): | study-ready
	@echo "$(PROTOCOL_1_SHA256)  results/fashion-mnist/runs.json" | sha256sum --check --status - || { echo \
	  "results/fashion-mnist/runs.json is not protocol 1's records: restore $@ from git, not move this file"; exit 1; }
	mkdir -p $(@D) && mv results/fashion-mnist/runs.json $@

# fp32: study.STUDY_PRECISION, as `study run`; a KD_SEED, KD_EPOCHS or KD_OUTPUT_DIR left in the shell is emptied
# (the notebook's own value), or the notebooks would open other runs than the jobs trained
checkpoints/notebooks/%.ipynb: | setup data study-ready $(ARCHIVED)
	KD_PROFILE=full KD_DATASET=fashion-mnist KD_PRECISION=fp32 KD_SEED= KD_EPOCHS= KD_OUTPUT_DIR= \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute \
	  --ExecutePreprocessor.timeout=-1 --ExecutePreprocessor.store_widget_state=False \
	  --output-dir checkpoints/notebooks notebooks/$*.ipynb

study: $(STUDY_DONE)
	cp $(STUDY_DONE) notebooks/
	$(PY) -m kd_utils.notebook strip notebooks checkpoints/notebooks
	$(PY) -m kd_utils report

# Tuning before the study (validation F1 only): one Optuna sweep per method with the study's teacher, its
# settings in kd_utils/study.py (SWEEP_SETTINGS, sweep_argv); notebook 05 then trains each method at the setting
# its sweep chose. Resumable: a finished sweep is not run again (its -best.json exists), an interrupted one
# continues on its journal file (checkpoints/sweeps-v2.journal). `python -m kd_utils study jobs` lists the runs.
sweeps: setup data
	$(PY) -m kd_utils study sweeps

report: setup  # re-render Pictures/ and the README's result tables from results/
	$(PY) -m kd_utils report

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
