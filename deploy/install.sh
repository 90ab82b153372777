#!/usr/bin/env bash
# The one install: `make install` (the venv of a checkout, with the test extras) and the code-location image
# (deploy/code-location.Dockerfile, without them) run this script, so the image holds what the tests ran on.
#   deploy/install.sh VENV [EXTRAS]      e.g. deploy/install.sh .venv test
# PYTHON (default python3.11) creates the venv when it does not exist yet.
set -euo pipefail
venv="$1"
extras="${2:-}"
python="${PYTHON:-python3.11}"
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch 2.13.0 (CPU) lies on the CI machines' disk (pip's find-links); elsewhere pip downloads it. The range in
# pyproject admits it; a GPU image installs the CUDA build of the same version first (docs/production.md).
"$venv/bin/python" -m pip install -q "torch==2.13.0" -e ".${extras:+[$extras]}"
# A class-data-sharing archive of Spark's driver classes: every Spark session starts ~3 s faster (optional: without
# it sessions start as before).
"$venv/bin/python" -m resources.spark 2>/dev/null \
  || echo "warning: no Spark class archive built; Spark sessions start ~3 s slower (rerun: $venv/bin/python -m resources.spark)"
