# Two commands do everything on a fresh clone (Python 3.11, pip and make assumed):
#   make demo   set up .venv, then run the main job on the embedded phantom data
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup jobs demo test bench clean

setup: $(STAMP) jobs

# Job folders: meta.json and app/config are committed; app/custom (the fedxmodal package the job
# carries to the sites) is exported from custom/ whenever the package or a spec changes.
JOB_SPECS := $(wildcard jobs/specs/*.json)
JOB_STAMPS := $(patsubst jobs/specs/%.json,jobs/%/app/custom/.exported,$(JOB_SPECS))
PKG_FILES := $(shell find custom/fedxmodal -name '*.py')

jobs: $(JOB_STAMPS)

jobs/%/app/custom/.exported: jobs/specs/%.json $(PKG_FILES) $(STAMP)
	$(PY) -m fedxmodal.recipes.export $< --export-dir jobs
	touch $@

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(PY) -m fedxmodal demo --workdir demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench_fedgin.py

clean:
	rm -rf demo workspace .pytest_cache
