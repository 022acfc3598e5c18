"""Are our latency figures as true as the runtimes' own tools? Side by side, interleaved.

    .venv/bin/python tools/bench_fidelity.py [--run runs/digits] [--rounds 9] [--cpus 0-1]

Uses the compiled models of a run directory (made with the default recipe if missing) and
compares, on the same compiled model and settings (the same explicit thread count on both sides):
- OpenVINO: our p50 (LATENCY hint, one request, bound inputs) against ``benchmark_app``'s median
  (``-hint latency -nireq 1 -infer_precision f32``, the same INFERENCE_NUM_THREADS);
- ONNX Runtime: our p50 against a minimal loop of ``session.run`` with pre-built inputs;
- repeatability: two fresh sessions of the same model, measured interleaved;
- harness overhead: our timing loop around a call that does nothing.
Every ratio is measured in alternating rounds (ours, theirs, ours, theirs, ...): the figure is
the median of the per-round ratios with their interquartile range (``kdexport.timing.paired``),
so a burst of load from a neighbour lands on both sides of a round. The noise monitor is read
around every round; benchmark_app is our child, so its CPU time counts as ours, not as others'.
Its last line is one JSON object: openvino_vs_benchmark_app and ort_vs_minimal_loop (student,
teacher: median ratio ours / theirs, IQR), repeat_spread (|median ratio - 1| of the same model
measured twice, the worse model), overhead_us, noise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

import numpy as np

from kdexport.artifact import Artifact
from kdexport.backends import backend
from kdexport.backends.profiles import load_target
from kdexport.benchmark import with_threads
from kdexport.pipeline import distill_and_export
from kdexport.timing import (
    available_cpus,
    measure_rounds,
    noise_between,
    noise_summary,
    paired,
    pin,
    read_noise,
    timed,
    unstable_reasons,
)

SLICE = {"warmup_iters": 50, "warmup_s": 0.3, "min_iters": 300, "min_time_s": 0.5}


def _runner(path: Path, target_name: str):
    target = with_threads(load_target(target_name), 0)
    return backend(target.backend, target.name).load(path, target)


def _figure(r: dict, noise: list) -> dict:
    quiet = noise_summary(noise)
    reasons = unstable_reasons(quiet, r["rel_iqr"])
    return {"ratio": r["ratio"], "iqr": r["iqr"], "rounds": r["rounds"], "unstable": reasons}


def benchmark_app(xml: Path, config: Path) -> float:
    """benchmark_app's median latency (ms) on the same IR and settings, one second."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-nireq", "1"]
    cmd += ["-infer_precision", "f32", "-data_shape", "input[1,1,8,8]", "-t", "1"]
    cmd += ["-load_config", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    value, unit = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", out).groups()
    return float(value) / (1000 if unit == "us" else 1)


def vs_benchmark_app(xml: Path, x: np.ndarray, rounds: int, config: Path) -> dict:
    """Ours and benchmark_app in alternating rounds; the median of per-round ratios."""
    call = _runner(xml, "openvino-cpu").bind(x)
    timed(call, SLICE["warmup_iters"], SLICE["warmup_s"])
    ours, theirs, noise = [], [], []
    for _ in range(rounds):
        before = read_noise()
        ours.append(float(np.median(timed(call, SLICE["min_iters"], SLICE["min_time_s"]))))
        theirs.append(benchmark_app(xml, config))
        noise.append(noise_between(before, read_noise()))
    return {**_figure(paired(ours, theirs), noise), "ours_us": np.median(ours) * 1e3}


def minimal_session(path: Path, threads: int):
    """The simplest honest ONNX Runtime timing: session.run on a pre-built input."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(calls: dict, rounds: int) -> dict:
    """Two calls in alternating rounds: the first's per-round median over the second's."""
    m = measure_rounds(
        calls,
        {
            **SLICE,
            "min_iters": SLICE["min_iters"] * rounds,
            "rounds": rounds,
            "min_time_s": SLICE["min_time_s"] * rounds,
        },
    )
    a, b = m["samples"].values()
    return _figure(paired(a, b), m["noise"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/digits")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per ratio")
    parser.add_argument("--cpus", help="pin to these CPUs (benchmark_app inherits it)")
    args = parser.parse_args()
    if args.cpus:
        pin(args.cpus)
    run = Path(args.run)
    if not (run / "manifest.json").is_file():
        distill_and_export(run)
    compiled = Artifact.open(run / "compile", "compile", "kdexport compile")
    with np.load(run / "export" / "io_sample.npz") as f:
        x = np.ascontiguousarray(f["input:input"][:1])
    threads = available_cpus()
    result = {"openvino_vs_benchmark_app": {}, "ort_vs_minimal_loop": {}, "repeat": {}}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "ov.json"
        config.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads)}}))
        for model in ("student", "teacher"):
            xml = compiled.path / "openvino-cpu" / f"{model}.xml"
            onnx_path = compiled.path / "ort-cpu" / f"{model}.onnx"
            ov = vs_benchmark_app(xml, x, args.rounds, config)
            sess = minimal_session(onnx_path, threads)
            feed = {sess.get_inputs()[0].name: x}
            ours = _runner(onnx_path, "ort-cpu").bind(x)
            orts = interleaved(
                {"ours": ours, "min": lambda s=sess, f=feed: s.run(None, f)}, args.rounds
            )
            again = _runner(onnx_path, "ort-cpu").bind(x)
            rep = interleaved({"first": ours, "second": again}, args.rounds)
            result["openvino_vs_benchmark_app"][model] = ov
            result["ort_vs_minimal_loop"][model] = orts
            result["repeat"][model] = rep
            print(
                f"{model}: openvino ours / benchmark_app {ov['ratio']:.3f} "
                f"(IQR {ov['iqr'][0]:.3f}-{ov['iqr'][1]:.3f}, ours {ov['ours_us']:.1f} us); "
                f"ort ours / minimal loop {orts['ratio']:.3f} "
                f"(IQR {orts['iqr'][0]:.3f}-{orts['iqr'][1]:.3f}); "
                f"same model twice {rep['ratio']:.3f} (IQR {rep['iqr'][0]:.3f}-{rep['iqr'][1]:.3f})"
            )
            for name, fig in (("openvino", ov), ("ort", orts), ("repeat", rep)):
                if fig["unstable"]:
                    print(f"  {model} {name}: unstable: {'; '.join(fig['unstable'])}")
    result["repeat_spread"] = max(abs(r["ratio"] - 1) for r in result["repeat"].values())
    result["overhead_us"] = float(np.median(timed(lambda: None, 100000, 0.5))) * 1000
    result["threads"] = threads
    print(json.dumps(result, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
