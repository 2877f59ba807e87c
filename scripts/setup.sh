#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with fedmed and its pinned dev dependencies.
# torch is pinned to the CPU build 2.13.0 (constraints.txt); a looser pin would pull CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"

# Headless Chromium renders the audit report in a test (tests/audit/test_audit_report.py). Installed with
# apt-get where there is one and we may (root, as in CI, or password-less sudo); elsewhere nothing happens
# and that test skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(false); fi
    if "${as_root[@]}" apt-get update -qq && \
       "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
        echo "installed chromium (the audit report's browser test)"
    else
        echo "chromium not installed: the audit report's browser test will skip"
    fi
fi
echo "fedmed is set up: . .venv/bin/activate && fedmed --help"
