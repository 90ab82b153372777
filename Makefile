# Two commands on a fresh machine: `make demo` (end-to-end datagen on synthetic data) and `make test`.
# Both create/reuse .venv and install the project into it first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export RECSYS_DATA_ROOT ?= $(CURDIR)/data

.PHONY: demo demo-real test test-fast test-services lint ui install clean dataproc-package

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 CPU lies on this machine's disk (find-links); the range in pyproject admits it.
	$(PY) -m pip install -q "torch==2.13.0" -e ".[test]"
	# A class-data-sharing archive of Spark's driver classes: every Spark session starts ~3 s faster (optional:
	# without it sessions start as before).
	$(PY) -m resources.spark 2>/dev/null || echo "warning: no Spark class archive built; Spark sessions start ~3 s slower (rerun: $(PY) -m resources.spark)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(PY) -m recsys_assets.demo

# MovieLens latest-small (../shared/realdata) laid out as 10 daily logs: import, datagen, training + evaluation,
# in its own instance and data root (docs/real_data.md).
demo-real: $(STAMP)
	DAGSTER_HOME=$(CURDIR)/.dagster_home_real RECSYS_DATA_ROOT=$(CURDIR)/data-real $(PY) -m recsys_assets.demo --dataset movielens

# What the full suite needs besides the venv: the local PostgreSQL server running, and Debian's Chromium for the
# UI test (Playwright drives it; no browser download).
test-services:
	@if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q; then \
	  pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -1)" main start || true; fi
	@command -v chromium >/dev/null || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium; }

test: $(STAMP) test-services
	$(PY) -m pytest -q -ra --timeout=900 tests

# About a minute: Definitions load + graph snapshot + layer contracts, and every test that needs no Spark session,
# Dagster run of Spark assets, daemon, database server or browser (RECSYS_TEST_FAST=1: a test that reaches for a
# Spark session or PostgreSQL anyway fails, naming the marker it lacks).
test-fast: $(STAMP)
	RECSYS_TEST_FAST=1 $(PY) -m pytest -q -ra --timeout=300 -m "not slow and not spark and not postgres" tests

# Seconds: style and lint (pinned ruff); .ci/run runs it before the suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf data .dagster_home

dataproc-package: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel -q --no-deps -w dist .
	cp recsys_assets/core/spark_job.py dist/
	ls -l dist
