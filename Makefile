# `make train` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests and benchmarks read real photos from $(CATSDOGS_DATA); ../shared/data/catsdogs if present.
CATSDOGS_DATA ?= $(if $(wildcard ../shared/data/catsdogs),../shared/data/catsdogs,data/catsdogs)
export CATSDOGS_DATA

.PHONY: setup data train test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# No photos yet: fetch the Oxford-IIIT Pet photos (cats and dogs, about 800 MB) with a progress bar.
data: setup
	@[ -d "$(CATSDOGS_DATA)" ] || $(BIN)/python -m classifier.data download --out "$(CATSDOGS_DATA)"

train: data
	$(BIN)/python train.py --data "$(CATSDOGS_DATA)"

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
