#!/usr/bin/env bash
# Quick start, command 2: set up .venv if needed, lint, then run the test suite.
# Extra arguments go to pytest (e.g. -k export, -m gpu).
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup-env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
# pytest exits 5 when it collected no test (e.g. a -k that matches nothing): not a failure.
[ "$rc" -eq 5 ] && { echo "pytest: no tests collected"; rc=0; }
exit "$rc"
