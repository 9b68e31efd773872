#!/usr/bin/env bash
# One-command install: a virtual environment in .venv with everything (client, export,
# local Triton, tests). Usage: scripts/install.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip>=24" "setuptools>=68" wheel
# torch first: SAM 2's sdist imports torch in its setup.py, so it is built without isolation.
$PIP install -q "torch==2.14.1" "torchvision==0.29.1" "numpy>=1.24,<2"
# SAM2_BUILD_CUDA=0: the optional CUDA extension only serves max_hole_area/max_sprinkle_area (0 by default).
SAM2_BUILD_CUDA=0 $PIP install -q --no-build-isolation "sam2==1.1.0"
# The three layers, editable: the SDK (client/), the server-side models (server/) and the rest
# (export, local Triton, CLI, bench, tests). One pip call, so the root's requirements on the
# first two are met by these checkouts, never by an index.
$PIP install -q --no-build-isolation -e ./client -e ./server -e ".[dev]"
$PIP check
# checkov, the policy scanner of deploy/k8s (tests/test_kubernetes.py), in a venv of its own
# inside this one: its pinned dependencies (packaging, importlib-metadata) conflict with ours.
"$PYTHON" scripts/tools_venv.py "$VENV/tools"
echo "Installed into $VENV. Activate with: source $VENV/bin/activate"
