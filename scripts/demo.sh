#!/usr/bin/env bash
# Set up .venv if needed, then run the demo preset (real MNIST subset, 4 heterogeneous clients).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/securedream run --preset demo "$@"
