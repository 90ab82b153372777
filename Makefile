# Two commands on a fresh machine: `make demo` (end-to-end datagen on synthetic data) and `make test`.
# Both create/reuse .venv and install the project into it first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export RECSYS_DATA_ROOT ?= $(CURDIR)/data
# MLflow, embedded, for the demos and the UI (not the tests): a SQLite store and an artifact directory beside the
# Dagster instance (production points MLFLOW_TRACKING_URI at the tracking server instead; docs/production.md).
# `make ui` serves its UI on port 5000.
demo ui: export MLFLOW_TRACKING_URI ?= sqlite:///$(DAGSTER_HOME)/mlflow.db
demo ui: export RECSYS_MLFLOW_ARTIFACT_ROOT ?= $(DAGSTER_HOME)/mlflow-artifacts
demo ui: export RECSYS_MLFLOW_UI_URL ?= http://127.0.0.1:5000

.PHONY: demo demo-real test test-fast test-services lint ui install clean dataproc-package

# The same script builds the code-location image (deploy/code-location.Dockerfile): one install.
$(STAMP): pyproject.toml deploy/install.sh
	PYTHON=$(PYTHON) bash deploy/install.sh $(VENV) test
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(PY) -m recsys_assets.demo

# MovieLens latest-small (../shared/realdata) laid out as 10 daily logs: import, datagen, training + evaluation,
# in its own instance and data root (docs/real_data.md).
demo-real: $(STAMP)
	DAGSTER_HOME=$(CURDIR)/.dagster_home_real RECSYS_DATA_ROOT=$(CURDIR)/data-real \
	  MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/.dagster_home_real/mlflow.db \
	  RECSYS_MLFLOW_ARTIFACT_ROOT=$(CURDIR)/.dagster_home_real/mlflow-artifacts \
	  $(PY) -m recsys_assets.demo --dataset movielens

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

# Dagster on :3000 and the MLflow UI on :5000 (stopped with it).
ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --default-artifact-root "$(RECSYS_MLFLOW_ARTIFACT_ROOT)" \
	  -h 127.0.0.1 -p 5000 & MLFLOW_PID=$$!; trap 'kill $$MLFLOW_PID 2>/dev/null' EXIT INT TERM; \
	  $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf data .dagster_home

dataproc-package: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel -q --no-deps -w dist .
	cp recsys_assets/core/spark_job.py dist/
	ls -l dist
