# Umbra — two commands: `make demo` and `make test`. Every set-up step is idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# chromium: headless browser for the report screenshot test (tests/test_report_browser.py)
APT_PKGS := dataset-fashion-mnist espeak-ng libsndfile1 chromium
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install system lint smoke bench clean

demo: install
	$(BIN)/umbra data prepare --preset default
	rm -rf runs/demo
	$(BIN)/umbra run --preset default --out runs/demo

# One check for humans and CI: lint, types, then the whole suite (slow end-to-end runs included),
# in two pytest-xdist workers: the deployment tests mostly wait on Flower's processes, so a
# second worker fills that time (`make test PYTEST_WORKERS=0` runs it in one process).
PYTEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/python -m pytest -q --durations=20 -n $(PYTEST_WORKERS)

# Debian packages, only the missing ones (apt-get update only when something is missing).
system:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# venv: torch (CPU wheel) first and alone, then the exact lock held by the torch constraint.
$(STAMP): requirements.lock constraints.txt pyproject.toml | system
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: system $(STAMP)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

smoke: install
	$(BIN)/umbra run --preset smoke --out runs/smoke

bench: install
	$(BIN)/python bench/round_overhead.py
	$(BIN)/python bench/strategies.py
	$(BIN)/python bench/dpsgd_overhead.py
	$(BIN)/python bench/secure_aggregation.py
	$(BIN)/python bench/manifest_load.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf runs .pytest_cache .mypy_cache
