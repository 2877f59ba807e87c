#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with fedmed and its pinned dev dependencies.
# torch is pinned to the CPU build 2.13.0 (constraints.txt); a looser pin would pull CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
echo "fedmed is set up: . .venv/bin/activate && fedmed --help"
