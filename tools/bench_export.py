"""Export and INT8 figures: the export suite on the CPU targets, and INT8 vs fp32 latency and
accuracy for the teacher-sized model and a mid-sized student.

    .venv/bin/python tools/bench_export.py [--out runs/bench-export]

Its last line is one JSON object: ``suite`` (architecture -> target -> exported, max_abs_diff,
top1_agreement) and ``int8`` (model -> target -> latency_ratio int8/fp32 p50, accuracy_drop in
points, shipped) and ``qat_vs_ptq`` (target -> INT8 accuracy of the mid-sized student after
post-training quantization and after quantization-aware distillation). Latency ratios are
measured side by side in one run (the INT8 gate's interleaved timing), never asserted in tests.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from suite_models import SUITE

from kdexport.backends.profiles import load_target
from kdexport.compile import compile_model
from kdexport.errors import KdxError
from kdexport.export import export_onnx, predict
from kdexport.pipeline import distill_and_export

CPU_TARGETS = ("ort-cpu", "openvino-cpu")
INT8_TARGETS = ("ort-cpu-int8", "openvino-cpu-int8")
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


def _mid_run(out_dir: Path, *extra: str) -> dict:
    """The default teacher and a mid-sized student (tests/suite_models.py:mid_cnn), INT8 vs fp32."""
    student = Path(__file__).resolve().parents[1] / "tests" / "suite_models.py"
    return distill_and_export(
        out_dir,
        overrides=[
            f"distill.student={student}:mid_cnn",
            "distill.epochs=20",
            "compile.targets=['ort-cpu', 'openvino-cpu', 'ort-cpu-int8', 'openvino-cpu-int8']",
            "benchmark.batch_sizes=[1]",
            "benchmark.min_time_s=0.2",
            "benchmark.memory=false",
            *extra,
        ],
    )


def int8(out_dir: Path) -> tuple[dict, dict]:
    """INT8 vs fp32 for the teacher and the mid-sized student; returns (figures, result)."""
    figs = _mid_run(out_dir)
    result = {"teacher": {}, "mid_student": {}}
    for target in INT8_TARGETS:
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
    return figs, result


def qat_vs_ptq(ptq: dict, ptq_dir: Path, out_dir: Path) -> dict:
    """Quantization-aware fine-tuning, as usually done: the distilled fp32 student trains 5 more
    epochs under simulated INT8 (distill.quant_aware, lower learning rate, the same teacher), and
    the same INT8 targets quantize it; its INT8 accuracy against the post-training-quantized one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ptq_dir / "teacher", out_dir / "teacher")  # the same teacher, reused
    fp32_student = ptq_dir / "student" / "model.pt"
    qat = _mid_run(
        out_dir,
        "distill.quant_aware=true",
        f"distill.checkpoint={fp32_student}",
        "distill.epochs=5",
        "distill.lr=0.002",
    )
    result = {}
    for target in INT8_TARGETS:
        p, q = ptq["targets"][target]["student"], qat["targets"][target]["student"]
        result[target] = {
            "ptq_int8_accuracy": p["accuracy"],
            "qat_int8_accuracy": q["accuracy"],
            "ptq_fp32_accuracy": p["fp32_accuracy"],
            "qat_fp32_accuracy": q["fp32_accuracy"],
        }
        print(
            f"{target}: INT8 accuracy, post-training {p['accuracy']:.2%} vs quantization-aware {q['accuracy']:.2%}"
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-export")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    ptq, int8_figures = int8(Path(args.out) / "ptq")
    figures = {
        "suite": suite(),
        "int8": int8_figures,
        "qat_vs_ptq": qat_vs_ptq(ptq, Path(args.out) / "ptq", Path(args.out) / "qat"),
    }
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
