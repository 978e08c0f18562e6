# newt — two commands on a fresh machine: `make demo`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Everything the demo keeps lives inside the repo (git-ignored): Dagster's run history, newt's caches and store.
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export NEWT_CACHE_DIR ?= $(CURDIR)/.newt/cache
export NEWT_STORE ?= $(CURDIR)/.newt/store
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test ui bench docs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,tracking,ray]'
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m newt.synthetic data/reversal.jsonl
	$(PY) -m jobs.launch demo_job  # through workspace.yaml: the UI lists the run under its job
	$(VENV)/bin/newt plan recipes/demo.yaml
	@echo
	@echo "Open the UI:  make ui   → http://127.0.0.1:3000  (asset group 'demo'; run history in .dagster_home)"
	@echo "Run it again: make demo → every stage is a cache hit."

# The object-store tests run against local emulators: moto and gcp-storage-emulator come with the `test` extra,
# Azurite (npm) is installed by .ci/deps.sh into the git-ignored .ci/node_modules. CI=true makes a server that is
# still missing fail its tests instead of skipping them, so `make test` runs the whole suite or says what is missing.
AZURITE := .ci/node_modules/.bin/azurite-blob

$(AZURITE): .ci/deps.sh
	bash .ci/deps.sh

test: install $(AZURITE)
	CI=true $(PY) -m pytest

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

docs: install
	$(PY) -m newt.docgen

bench: install
	$(PY) bench/demo_time.py

clean:
	rm -rf .newt .dagster_home
	find data -mindepth 1 ! -name reversal.jsonl -delete 2>/dev/null || true
