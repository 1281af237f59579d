#!/usr/bin/env bash
# Set up .venv if needed, then run the default (fast) test suite. Extra arguments go to pytest.
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export MPLBACKEND=Agg
.venv/bin/python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "no tests were collected: failing" >&2
    exit 1
fi
exit "$status"
