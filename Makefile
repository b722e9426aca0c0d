# Two entry points for a fresh clone; each sets up what it needs first.
#   make demo   quick offline study on Fashion-MNIST (CPU, a few minutes), prints the summary table
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test lint clean-runs

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

test: setup data
	MPLBACKEND=Agg $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
