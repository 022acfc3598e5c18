#!/usr/bin/env bash
# On the GPU machine (no package index): put the onnxruntime-gpu wheel together from the parts
# that ../shared/tools/gpu-wheel-parts made and that were copied to /tmp/ortgpu/, install it into
# /tmp/site (beside the CPU onnxruntime, which stays untouched), and run tools/gpu_check.py with
# that folder first on PYTHONPATH. Installs once; a rerun goes straight to the checks.
#
# Usage, from the project's root:  bash tools/gpu_device_check.sh WHEEL_NAME [gpu_check.py args]
#   WHEEL_NAME: the name gpu-wheel-parts printed, e.g. onnxruntime_gpu-1.31.1-cp312-cp312-….whl
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 WHEEL_NAME [gpu_check.py args]" >&2; exit 2; }
wheel=$1
shift
parts=${ORTGPU_PARTS:-/tmp/ortgpu}
site=${ORTGPU_SITE:-/tmp/site}
py=${PYTHON:-python3}
if [ ! -f "$site/onnxruntime/__init__.py" ]; then
  ls "$parts"/part-* >/dev/null 2>&1 || { echo "no parts in $parts: copy .gpuwheel/part-* there" >&2; exit 1; }
  cat "$parts"/part-* > "$parts/$wheel"
  "$py" -m pip install -q --no-deps --no-index --target "$site" "$parts/$wheel"
fi
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" exec "$py" tools/gpu_check.py "$@"
