#!/usr/bin/env bash
# Quick start, command 1: set up .venv if needed, then run the whole pipeline on the embedded
# default recipe (kdexport/recipes/digits.toml). Extra arguments go to `kdexport distill-and-export`.
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup-env.sh
exec .venv/bin/kdexport distill-and-export "$@"
