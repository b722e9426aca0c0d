# Two entry points for a fresh clone; each sets up what it needs first.
#   make demo   quick offline run of every method on Fashion-MNIST (CPU, tens of minutes), prints the summary table
#   make test   the test suite: pytest tests/, then the notebooks through nbval (smoke profile)
#   make report re-render Pictures/ and the README tables from results/
#   make sweeps tune every method on validation F1 (short Optuna sweeps), before the study
#   make study  the stored full-profile study: notebooks 00-05 on Fashion-MNIST, outputs kept in notebooks/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test report study sweeps lint

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $@

setup: $(VENV)/.installed

data:  # Debian's Fashion-MNIST: the offline dataset (CIFAR-10 needs the network)
	@[ -d $(FMNIST) ] || $(SUDO) apt-get install -y dataset-fashion-mnist \
	  || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

demo: setup data
	$(PY) -m kd_utils run --experiment all --dataset fashion-mnist --train-size 10000 --epochs 3 --teacher-epochs 3 \
	  --results-path runs/demo.json

test: setup data  # unit tests, then every notebook executed in the smoke profile (nbval) in a scratch folder
	MPLBACKEND=Agg $(PY) -m pytest -q tests
	KD_PROFILE=smoke KD_DATASET=fashion-mnist KD_OUTPUT_DIR=$$(mktemp -d) \
	  $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks

# Each notebook is executed into checkpoints/notebooks/ (written when it finishes); one already there is not
# run again, so after an interruption `make study` goes on with the first unfinished notebook, which resumes
# its training from checkpoints/. The executed notebooks replace the committed ones only when all six ran.
STUDY_DONE := $(patsubst notebooks/%,checkpoints/notebooks/%,$(wildcard notebooks/0*.ipynb))

checkpoints/notebooks/%.ipynb: | setup data
	KD_PROFILE=full KD_DATASET=fashion-mnist $(VENV)/bin/jupyter nbconvert --to notebook --execute \
	  --ExecutePreprocessor.timeout=-1 --output-dir checkpoints/notebooks notebooks/$*.ipynb

study: $(STUDY_DONE)
	cp $(STUDY_DONE) notebooks/
	$(PY) -m kd_utils report

# Tuning before the study (validation F1 only): a short sweep per method, 6 trials of 5 epochs each on the
# full training set, with the study's teacher and seed 0 (so the stored teacher outputs are shared with the
# study's 15-epoch runs); notebook 05 then trains each method at the setting its sweep chose. Resumable: a
# finished sweep is not run again (its -best.json exists), an interrupted one continues on its SQLite storage.
SWEEP_METHODS := logit dkd dist rkd hidden logit+hidden regressor at logit+regressor fitnets
SWEEP_FLAGS := --dataset fashion-mnist --teacher-epochs 40 --teacher-random-erasing 0.5 --epochs 5 --trials 6 \
  --checkpoint-dir checkpoints --results-dir results/fashion-mnist/sweeps --storage sqlite:///checkpoints/sweeps.db \
  --no-progress --resume

sweeps: setup data
	@for m in $(SWEEP_METHODS); do \
	  [ -f "results/fashion-mnist/sweeps/fashion-mnist-$$(echo $$m | tr + _)-seed0-best.json" ] && continue; \
	  $(PY) -m kd_utils sweep --method $$m $(SWEEP_FLAGS) || exit 1; \
	done

report: setup  # re-render Pictures/ and the README's result tables from results/
	$(PY) -m kd_utils report

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
