"""Export and INT8 figures: the export suite on the CPU targets, and INT8 vs fp32 latency and
accuracy for the teacher-sized model and a mid-sized student.

    .venv/bin/python tools/bench_export.py [--out runs/bench-export]

Its last line is one JSON object: ``suite`` (architecture -> target -> exported, max_abs_diff,
top1_agreement) and ``int8`` (model -> target -> latency_ratio int8/fp32 p50, accuracy_drop in
points, shipped). Latency ratios are measured side by side in one run (the INT8 gate's
interleaved timing), never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from suite_models import SUITE  # noqa: E402

from kdexport.compile import compile_model  # noqa: E402
from kdexport.errors import KdxError  # noqa: E402
from kdexport.export import export_onnx, predict  # noqa: E402
from kdexport.pipeline import distill_and_export  # noqa: E402
from kdexport.targets import load_target  # noqa: E402

CPU_TARGETS = ("ort-cpu", "openvino-cpu")
OPTS = {"opset": 18, "example_batch": 4, "tolerance": 1e-4, "external_data_mb": 1800}


def suite() -> dict:
    out = {}
    x = np.random.default_rng(0).random((256, 1, 8, 8), dtype=np.float32)
    for arch, factory in SUITE.items():
        torch.manual_seed(0)
        model = factory()
        model.train()
        with torch.no_grad():
            model(torch.from_numpy(x))  # non-trivial BatchNorm statistics
        model.eval()
        out[arch] = {}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            try:
                export_onnx(model, path, torch.from_numpy(x[:4]), x, OPTS, {"role": arch})
            except KdxError as e:
                out[arch] = {t: {"exported": False, "error": str(e)} for t in CPU_TARGETS}
                continue
            sample = {"x": x, "y": np.zeros(len(x), np.int64), "model": predict(model, x)}
            for target in CPU_TARGETS:
                (Path(tmp) / target).mkdir()
                r = compile_model(
                    path, Path(tmp) / target, "model", load_target(target), sample, None
                )
                out[arch][target] = {
                    "exported": True,
                    "max_abs_diff": r["parity"]["max_abs_diff"],
                    "top1_agreement": r["parity"]["top1_agreement"],
                }
        print(
            f"suite {arch}: "
            + ", ".join(f"{t} {v.get('max_abs_diff', 'failed'):.2g}" for t, v in out[arch].items())
        )
    return out


def int8(out_dir: Path) -> dict:
    """Default teacher and a mid-sized student (tests/suite_models.py:mid_cnn), INT8 vs fp32."""
    student = Path(__file__).resolve().parents[1] / "tests" / "suite_models.py"
    figs = distill_and_export(
        out_dir,
        overrides=[
            f"distill.student={student}:mid_cnn",
            "distill.epochs=20",
            "compile.targets=['ort-cpu', 'openvino-cpu', 'ort-cpu-int8', 'openvino-cpu-int8']",
            "benchmark.batch_sizes=[1]",
            "benchmark.min_time_s=0.2",
        ],
    )
    result = {"teacher": {}, "mid_student": {}}
    for target in ("ort-cpu-int8", "openvino-cpu-int8"):
        for model, key in (("teacher", "teacher"), ("student", "mid_student")):
            f = figs["targets"][target][model]
            result[key][target] = {
                "latency_ratio": f["latency_ratio"],
                "accuracy_drop": f["accuracy_drop_points"],
                "shipped": f["shipped"],
                "reason": f["reason"],
            }
            print(
                f"int8 {key} {target}: int8/fp32 p50 {f['latency_ratio']:.2f}, "
                f"accuracy drop {f['accuracy_drop_points']:.2f} points, shipped {f['shipped']}"
            )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-export")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    figures = {"suite": suite(), "int8": int8(Path(args.out))}
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
