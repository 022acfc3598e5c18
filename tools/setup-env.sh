#!/usr/bin/env bash
# Creates or refreshes .venv with kdexport and its dependencies. Safe to run again: it installs
# only what is missing or what pyproject.toml changed. Sourced by run.sh and test.sh.
#
# PyTorch: a machine without an NVIDIA GPU gets the CPU build (a plain `torch` requirement would
# pull a multi-GB CUDA build). To choose another build, install it into .venv first, or set
# KDEXPORT_TORCH to pip arguments, e.g. KDEXPORT_TORCH="torch==2.13.0" for the default CUDA build.
#
# ONNX Runtime: the [gpu] extra (onnxruntime-gpu) where nvidia-smi runs, else [cpu] (onnxruntime);
# KDEXPORT_ORT=cpu or gpu chooses. The two builds cannot share .venv: switching removes both
# first, then installs the one chosen.
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

ort=${KDEXPORT_ORT:-$(command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)}
case "$ort" in
  cpu) other=onnxruntime-gpu ;;
  gpu) other=onnxruntime ;;
  *) echo "KDEXPORT_ORT=$ort: use cpu or gpu" >&2; exit 2 ;;
esac

stamp="$venv/.kdexport-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $ort"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if "$venv/bin/python" -m pip show -q "$other" 2>/dev/null; then
    # Both builds own the same files: remove both, so that the one wanted is installed whole.
    "$venv/bin/python" -m pip uninstall -y -q onnxruntime onnxruntime-gpu
  fi
  # text: transformers + tokenizers (tests/test_text_*); speech: soundfile (tests/test_speech_*);
  # prune: torch-pruning (tests/test_prune.py)
  "${pip[@]}" -e "$root[$ort,test,text,speech,prune,serve]"
  echo "$want" > "$stamp"
fi
