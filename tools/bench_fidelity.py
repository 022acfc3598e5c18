"""Are our latency figures as true as the runtimes' own tools? Side by side, in one run.

    .venv/bin/python tools/bench_fidelity.py [--run runs/digits]

Uses the compiled models of a run directory (made with the default recipe if missing) and
compares, on the same compiled model and settings:
- OpenVINO: our p50 (LATENCY hint, one request, bound inputs) against ``benchmark_app``'s median
  (``-hint latency -nireq 1 -infer_precision f32``);
- ONNX Runtime: our p50 against a minimal loop of ``session.run`` with pre-built inputs;
- repeatability: the same measurement twice in a row;
- harness overhead: our timing loop around a call that does nothing.
Its last line is one JSON object: openvino_vs_benchmark_app and ort_vs_minimal_loop (student,
teacher: our p50 / theirs), repeat_spread, overhead_us.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

import numpy as np

from kdexport.artifact import Artifact
from kdexport.backends.profiles import load_target
from kdexport.benchmark import time_models
from kdexport.bundle.runner import timed
from kdexport.pipeline import distill_and_export

OPTS = {
    "batch_sizes": [1],
    "warmup_iters": 50,
    "warmup_s": 0.5,
    "min_iters": 1000,
    "min_time_s": 3.0,
    "rounds": 1,
    "repeats": 1,
}


def ours(path: Path, target_name: str, x: np.ndarray) -> float:
    from kdexport.backends import backend

    target = load_target(target_name)
    module = backend(target.backend, target.name)
    timed = time_models({"m": lambda: module.load(path, target)}, x, OPTS)
    return timed["m"]["latency"]["1"]["p50_ms"]


def benchmark_app(xml: Path) -> float:
    """benchmark_app's median latency (ms) on the same IR and settings."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [
        exe,
        "-m",
        str(xml),
        "-d",
        "CPU",
        "-hint",
        "latency",
        "-nireq",
        "1",
        "-infer_precision",
        "f32",
        "-data_shape",
        "input[1,1,8,8]",
        "-t",
        "5",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    value, unit = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", out).groups()
    return float(value) / (1000 if unit == "us" else 1)


def minimal_loop(path: Path, x: np.ndarray) -> float:
    """The simplest honest ONNX Runtime timing: session.run on a pre-built input, median."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(200):
        sess.run(None, feed)
    times, end = [], time.perf_counter() + 3.0
    while time.perf_counter() < end or len(times) < 1000:
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/digits")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "manifest.json").is_file():
        distill_and_export(run)
    compiled = Artifact.open(run / "compile", "compile", "kdexport compile")
    with np.load(run / "export" / "io_sample.npz") as f:
        x = np.ascontiguousarray(f["x"][:1])
    result = {"openvino_vs_benchmark_app": {}, "ort_vs_minimal_loop": {}}
    first = {}
    for model in ("student", "teacher"):
        xml = compiled.path / "openvino-cpu" / f"{model}.xml"
        onnx_path = compiled.path / "ort-cpu" / f"{model}.onnx"
        ov_ours, ov_theirs = ours(xml, "openvino-cpu", x), benchmark_app(xml)
        ort_ours, ort_min = ours(onnx_path, "ort-cpu", x), minimal_loop(onnx_path, x)
        result["openvino_vs_benchmark_app"][model] = ov_ours / ov_theirs
        result["ort_vs_minimal_loop"][model] = ort_ours / ort_min
        first[model] = ort_ours
        print(
            f"{model}: openvino ours {ov_ours * 1000:.1f} us vs benchmark_app {ov_theirs * 1000:.1f} us; "
            f"ort ours {ort_ours * 1000:.1f} us vs minimal loop {ort_min * 1000:.1f} us"
        )
    again = {m: ours(compiled.path / "ort-cpu" / f"{m}.onnx", "ort-cpu", x) for m in first}
    result["repeat_spread"] = max(abs(again[m] - first[m]) / first[m] for m in first)
    result["overhead_us"] = float(np.median(timed(lambda: None, 100000, 0.5))) * 1000
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
