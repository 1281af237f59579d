#!/usr/bin/env bash
# Create (or update) .venv in the repo root and install securedream with its test extras.
# torch/torchvision: pip takes 2.14.1 / 0.29.1 from local disk where available (any release in the
# ranges declared in pyproject.toml works).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.securedream-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev,flower]"
    touch "$stamp"
fi
