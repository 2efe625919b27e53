# Two entry points: `make demo` and `make test`. Both set up everything from scratch on a fresh
# Debian machine (Python 3.11, root): the virtualenv, the Python packages and the real dataset.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch/torchvision releases known to work (served from local disk on our machines).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test setup dataset tables clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[export,test]'
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

dataset: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(BIN)/mobilecnn tables

test: setup
	$(BIN)/python -m pytest -q

tables: setup
	$(BIN)/mobilecnn tables --out docs/paper_tables.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
