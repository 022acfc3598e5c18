#!/usr/bin/env bash
# Creates or refreshes .venv with kdexport and its dependencies. Safe to run again: it installs
# only what is missing or what pyproject.toml changed. Sourced by run.sh and test.sh.
#
# PyTorch: a machine without an NVIDIA GPU gets the CPU build (a plain `torch` requirement would
# pull a multi-GB CUDA build). To choose another build, install it into .venv first, or set
# KDEXPORT_TORCH to pip arguments, e.g. KDEXPORT_TORCH="torch==2.13.0" for the default CUDA build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
cpu_index=https://download.pytorch.org/whl/cpu

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${KDEXPORT_TORCH:-}" ]; then
    # shellcheck disable=SC2086  # word splitting wanted: pip arguments
    "${pip[@]}" $KDEXPORT_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    # CPU build: from a local wheel or index if one has it, else from PyTorch's CPU index.
    "${pip[@]}" "torch==2.13.0+cpu" 2>/dev/null || "${pip[@]}" torch --index-url "$cpu_index"
  fi
fi

stamp="$venv/.kdexport-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" -e "$root[test]"
  echo "$want" > "$stamp"
fi
