#!/usr/bin/env python3
"""Measure how far each reduced precision lands from PyTorch's fp32 outputs, to choose and check
the parity bounds of kdexport.backends.profiles.PARITY (|a - b| <= atol + rtol·|b|).

    .venv/bin/python tools/measure_parity_bounds.py --run runs/digits

On a run directory's exported teacher and student and its held-out sample: fp16 (ONNX Runtime's
float16 converter, run by the CPU provider, and PyTorch in float16), bf16 (PyTorch autocast) and
INT8 (both INT8 targets, calibrated as compile does). For each, the largest absolute difference,
the atol that the profile's rtol would need, the profile's atol, the margin (atol / needed) and
top-1 agreement. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

import numpy as np
import torch

from kdexport.backends import backend
from kdexport.backends.fp16 import convert
from kdexport.backends.profiles import PARITY, load_target
from kdexport.context import Run
from kdexport.distill import load_student
from kdexport.feeds import load_sample
from kdexport.onnxfile import run_reference
from kdexport.pipeline import load_recipe
from kdexport.teacher import load_teacher

MODELS = ("teacher", "student")


def figures(actual: np.ndarray, reference: np.ndarray, precision: str) -> dict:
    atol, rtol, _ = PARITY[precision]
    a, b = actual.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(a - b)
    needed = float(max(0.0, (diff - rtol * np.abs(b)).max()))
    return {
        "max_abs_diff": float(diff.max()),
        "max_abs_reference": float(np.abs(b).max()),
        "needed_atol": needed,
        "atol": atol,
        "rtol": rtol,
        "margin": atol / needed if needed else None,
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
    }


def torch_outputs(run: Path) -> dict[str, torch.nn.Module]:
    context = Run(run, load_recipe(run / "recipe.toml")["data"])
    return {"teacher": load_teacher(context)[0], "student": load_student(context)[0]}


def measure(run: Path) -> dict:
    inputs, sample = load_sample(run / "export" / "io_sample.npz")
    calibration = load_sample(run / "export" / "calibration.npz")[0]["input"]
    x, out = inputs["input"], {}
    nets = torch_outputs(run)
    for name in MODELS:
        ref, net = sample[name], nets[name]
        with tempfile.TemporaryDirectory() as tmp:
            fp16 = Path(tmp) / f"{name}.fp16.onnx"
            convert(run / "export" / f"{name}.onnx", fp16)
            out[f"fp16-onnxruntime-cpu/{name}"] = figures(run_reference(fp16, x), ref, "fp16")
        with torch.no_grad():
            half = net.half()(torch.from_numpy(x).half()).float().numpy()
            out[f"fp16-torch-cpu/{name}"] = figures(half, ref, "fp16")
            net.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = net(torch.from_numpy(x)).float().numpy()
            out[f"bf16-torch-autocast/{name}"] = figures(bf16, ref, "bf16")
        for target_name in ("ort-cpu-int8", "openvino-cpu-int8"):
            target = load_target(target_name)
            if target.unavailable_reason():
                continue
            module = backend(target.backend, target.name)
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = run / "export" / f"{name}.onnx"
                main = module.compile(onnx_path, Path(tmp), name, target, calibration)
                int8 = module.load(main, target).run(x)
            out[f"int8-{target_name}/{name}"] = figures(int8, ref, "int8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a completed run directory")
    args = parser.parse_args()
    result = measure(args.run)
    for key, f in result.items():
        margin = f"{f['margin']:.1f}x" if f["margin"] else "-"
        print(
            f"{key:<38} max abs {f['max_abs_diff']:.3g}  needs atol {f['needed_atol']:.3g} at "
            f"rtol {f['rtol']:g}  (bound {f['atol']:g}, margin {margin})  top-1 {f['top1_agreement']:.2%}"
        )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
