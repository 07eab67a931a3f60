# `make train` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests and benchmarks read real photos from $(CATSDOGS_DATA); ../shared/data/catsdogs if present.
CATSDOGS_DATA ?= $(if $(wildcard ../shared/data/catsdogs),../shared/data/catsdogs,data/catsdogs)
export CATSDOGS_DATA
# More train.py flags for make train, e.g. TRAIN_FLAGS='--epochs 1 --image-size 32' (tests/test_readme.py).
TRAIN_FLAGS ?=

.PHONY: setup data train test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# No photos yet (no folder, or an empty one): fetch the Oxford-IIIT Pet photos (cats and dogs,
# about 800 MB) with a progress bar.
data: setup
	@[ -n "$$(ls -A "$(CATSDOGS_DATA)" 2>/dev/null)" ] || $(BIN)/python -m classifier.data download --out "$(CATSDOGS_DATA)"

train: data
	$(BIN)/python train.py --data "$(CATSDOGS_DATA)" $(TRAIN_FLAGS)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
