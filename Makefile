# d2lres: `make run` (main job) and `make test` build the environment first if it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast check bench env clean lib-check notebooks lib-sync

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

## Main job: fetch Fashion-MNIST, train ResNet-18 in all three backends, write runs/compare-quick/report.md
run: $(STAMP)
	$(PY) -m d2lres compare --preset quick --out runs/compare-quick

## The whole test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q

## Without the slow tests
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## The same-function checks across backends, as a table
check: $(STAMP)
	$(PY) -m d2lres compare --check

## images/s per backend, d2lres vs the chapter's way, vs the matmul limit: runs/bench/bench.{md,json,png}
bench: $(STAMP)
	$(PY) -m d2lres bench --variants --out runs/bench

clean:
	rm -rf $(VENV) runs

## The chapter: #@save cells vs the library, generated notebooks vs the source
lib-check: $(STAMP)
	$(PY) -m d2lres.chapter check

## Regenerate notebooks/<framework>/resnet.ipynb from notebooks/resnet.md
notebooks: $(STAMP)
	$(PY) -m d2lres.chapter build

## Bring the #@save cells back in line with the library (the library is the source of truth)
lib-sync: $(STAMP)
	$(PY) -m d2lres.chapter sync
