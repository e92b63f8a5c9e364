# One entry point for everything: `make train`, `make test` (CI also runs `make test-slow`).
# Each target creates .venv and installs the package (editable, with dev extras) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-slow lint format tensorboard bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)  ## the default job: InfoCatVAE on MNIST (extra Hydra overrides: make train ARGS="model.lam=4")
	$(BIN)/python -m infocatvae.train $(ARGS)

test: $(STAMP)  ## the suite but the end-to-end runs marked slow (5 to 11.5 min on 2 cores: README)
	$(BIN)/python -m pytest -ra -m "not slow" $(ARGS)

test-slow: $(STAMP)  ## the end-to-end runs marked slow (SLURM's included); .ci/run runs both
	$(BIN)/python -m pytest -ra -m slow $(ARGS)

lint: $(STAMP)  ## ruff: lint, import order and format check (make format fixes what it can)
	$(BIN)/ruff check infocatvae tests experiments hydra_plugins
	$(BIN)/ruff format --check infocatvae tests experiments hydra_plugins

format: $(STAMP)
	$(BIN)/ruff check --fix infocatvae tests experiments hydra_plugins
	$(BIN)/ruff format infocatvae tests experiments hydra_plugins

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir logs --bind_all

bench: $(STAMP)
	$(BIN)/python -m experiments.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
