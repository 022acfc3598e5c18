#!/usr/bin/env bash
# The tests marked `backends` (every call into torch.onnx, ONNX Runtime, OpenVINO and NNCF) with
# the lowest versions pyproject.toml allows, pinned in tools/lowest-versions.txt, in .venv-lowest
# beside .venv. Creates .venv-lowest, or reuses it while pyproject.toml and the pins are unchanged.
# torch is the CPU build, as tools/setup-env.sh installs it. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-lowest"
pins="$root/tools/lowest-versions.txt"
py=${PYTHON:-python3}
cpu_index=https://download.pytorch.org/whl/cpu

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "${pip[@]}" "torch==2.13.0+cpu" 2>/dev/null || "${pip[@]}" torch --index-url "$cpu_index"
fi
stamp="$venv/.kdexport-installed"
want=$(cat "$root/pyproject.toml" "$pins" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" -c "$pins" -e "$root[cpu,test,text,speech,prune,serve]"
  echo "$want" > "$stamp"
fi

cd "$root"
echo "lowest versions: $("$venv/bin/python" -c '
import importlib.metadata as m
print(", ".join(f"{d} {m.version(d)}" for d in
      ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf",
       "transformers", "tokenizers", "soundfile", "torch-pruning", "mlcommons-loadgen")))')"
# No test collected (pytest's exit 5) fails here: a lost `backends` marker must not pass.
exec "$venv/bin/python" -m pytest -m backends "$@"
