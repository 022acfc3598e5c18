#!/usr/bin/env bash
# The tests marked `vision` (torchvision: and timm: model specs through export, compile and
# parity) in .venv-vision beside .venv, with torchvision and timm installed. A separate
# environment because torchvision must match torch's build exactly: the CPU torch of .venv has
# no torchvision beside it on this machine (the registry's torchvision is a CUDA build that fails
# to load with it: "operator torchvision::nms does not exist"), so this one installs torch's CUDA
# build with its torchvision; it runs on the CPU. Creates .venv-vision, or reuses it while
# pyproject.toml and this script are unchanged. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-vision"
py=${PYTHON:-python3}
vision_pins=(torch==2.14.1 torchvision==0.29.1 timm==1.0.29)

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
stamp="$venv/.kdexport-installed"
want=$(cat "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" "${vision_pins[@]}"
  "${pip[@]}" -e "$root[cpu,test,vision,prune]" "${vision_pins[@]}"
  echo "$want" > "$stamp"
fi

cd "$root"
echo "vision versions: $("$venv/bin/python" -c '
import importlib.metadata as m
print(", ".join(f"{d} {m.version(d)}" for d in
      ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "openvino")))')"
# No test collected (pytest's exit 5) fails here: a lost `vision` marker must not pass.
exec "$venv/bin/python" -m pytest -m vision "$@"
