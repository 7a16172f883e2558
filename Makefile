# d2lres: `make run` (main job) and `make test` build the environment first if it is missing.
#
# Sets (constraints/<set>.txt pins every package):
#   SET=all      (default) PyTorch, TensorFlow/Keras 3, MXNet 1.9.1, JAX on numpy 1.26; Python 3.11-3.12
#   SET=current  the newest PyTorch, TensorFlow and JAX on numpy 2, Python 3.13; no MXNet
SET ?= all
ifeq ($(SET),all)
VENV ?= .venv
PYTHONS := python3.12 python3.11
else ifeq ($(SET),current)
VENV ?= .venv-current
PYTHONS := python3.13
else
$(error unknown SET=$(SET): use all or current)
endif
# The newest supported Python on the PATH that runs (a pyenv shim may exist and fail); PYTHON=... to choose.
PYTHON ?= $(firstword $(foreach p,$(PYTHONS),$(shell $(p) -c 'print("$(p)")' 2>/dev/null)))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(SET)
EXTRAS := $(if $(filter all,$(SET)),all,current)

.PHONY: run test test-fast test-frameworks test-times check bench env clean lib-check notebooks lib-sync lint lab book record

$(STAMP): pyproject.toml constraints/$(SET).txt
	@test -n "$(PYTHON)" || { echo "make: no Python for SET=$(SET) on the PATH (tried: $(PYTHONS)); install one" \
	  "(e.g. 'apt install python3.11' or 'pyenv install 3.12') or name it: make PYTHON=/path/to/python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints/$(SET).txt -e '.[$(EXTRAS),dev]'
	# The book's d2l package, the tests' reference: its own pins (numpy 1.23.5) do not install today.
	$(PY) -m pip install --quiet --no-deps -c constraints/$(SET).txt d2l
ifeq ($(SET),current)
	# torch 2.15's CUDA build loads triton (an LLVM of its own) on its first step; in a process that
	# imported TensorFlow first (its LLVM), that aborts ("registered more than once"). On the CPU
	# torch does not need it.
	$(PY) -m pip uninstall --quiet --yes triton
endif
	touch $(STAMP)

env: $(STAMP)

## Main job: fetch Fashion-MNIST, train ResNet-18 in every backend, write runs/compare-quick/report.md
run: $(STAMP)
	$(PY) -m d2lres compare --preset quick --out runs/compare-quick

## Tests run in two pytest runs: the tests that share the machine well on WORKERS pytest-xdist
## workers (worksteal: a worker that runs out takes tests queued on the other), then the `serial`
## ones (signals, data-parallel launches) alone. Each run writes its JUnit report (every test's time) to build/test-times/, which
## `make test-times` summarises. $(call tests,NAME,SELECT): the tests that the marker expression
## "SELECT serial" selects (SELECT: empty, or ending in "and").
WORKERS ?= 2
define tests
	@mkdir -p build/test-times; rm -f build/test-times/$(1)-*.xml; rc=0; \
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal -m "$(2) not serial" \
	  --junitxml=build/test-times/$(1)-parallel.xml $(PYTEST_ARGS) || rc=$$?; \
	$(PY) -m pytest -q -p no:xdist -m "$(2) serial" --junitxml=build/test-times/$(1)-serial.xml \
	  $(PYTEST_ARGS) || { r=$$?; [ $$r = 5 ] || rc=$$r; }; \
	exit $$rc
endef

## The whole test suite (what CI runs)
test: $(STAMP)
	$(call tests,$(SET),)

## Without the slow tests: a developer's quick loop
test-fast: $(STAMP)
	$(call tests,$(SET)-fast,not slow and)

## The fast tests whose outcome depends on the frameworks (their versions, kernels, instruction set;
## marked `framework`): what CI runs again under the current set, held to AVX2. The rest (files,
## folders, signals, the command line's messages, the site, packaging) is the same code on either set.
test-frameworks: $(STAMP)
	$(call tests,$(SET)-frameworks,framework and not slow and)

## Each test run's wall time and the slowest tests (from build/test-times/); WRITE=1: into docs/development.md
test-times:
	$(PY) scripts/test-times $(if $(WRITE),--write docs/development.md)

## The same-function checks across backends, as a table
check: $(STAMP)
	$(PY) -m d2lres check

## images/s per backend, d2lres vs the chapter's way, vs the matmul limit: runs/bench/bench.{md,json,png}
bench: $(STAMP)
	$(PY) -m d2lres bench --variants --out runs/bench

lint: $(STAMP)
	$(VENV)/bin/ruff check d2lres tests book

clean:
	rm -rf .venv .venv-current runs

## The chapter: #@save cells vs the library, generated notebooks vs the source
lib-check: $(STAMP)
	$(PY) -m book.chapter check

## The book site in build/book: the chapter's two editions in English and Japanese with each framework's outputs
## (fast mode; FULL=1: the chapter's settings), and the docs. Installs the `book` extra if missing.
book: $(STAMP)
	@$(PY) -c 'import sphinx, myst_parser, sphinx_design, furo, latex2mathml, playwright' 2>/dev/null || \
	  $(PY) -m pip install --quiet -c constraints/$(SET).txt -e '.[book]'
	$(PY) -m book.build --set $(SET) $(if $(FULL),--full)

## Record a training cell's run for the pages (book/record.py): RECIPE=resnet-0.17/train FW=pytorch;
## without them every recipe in every framework, one run at a time
record: $(STAMP)
	$(PY) -m book.record $(RECIPE) $(if $(FW),--framework $(FW))

## Regenerate notebooks/[ja/]<framework>/resnet{,-1.0}.ipynb from notebooks/[ja/]resnet{,-1.0}.md (both editions)
notebooks: $(STAMP)
	$(PY) -m book.chapter build

## Bring the #@save cells back in line with the library (the library is the source of truth)
lib-sync: $(STAMP)
	$(PY) -m book.chapter sync

## JupyterLab on the chapter's notebooks (the lab extra); LAB_OPTIONS for jupyter lab's own, e.g. --port=8899
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_OPTIONS)
