"""Latency methodology and the ``benchmark`` stage.

Method (as OpenVINO's ``benchmark_app``): inputs bound once outside the timed loop, warm-up by
iterations and time, then at least ``min_iters`` iterations and ``min_time_s`` seconds per model.
Teacher and student are measured interleaved, in ``rounds`` alternating slices, so a drift in the
machine's speed hits both. End-to-end latency (numpy in, numpy out, conversions included) is
measured beside the bound, compute-only figure.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np

from kdexport.artifact import Artifact
from kdexport.backends import backend
from kdexport.distill import Progress, _quiet
from kdexport.export import MODELS
from kdexport.recipe import Range
from kdexport.targets import Target

METHOD = (
    "inputs bound once (ONNX Runtime IO binding / OpenVINO shared-memory tensor), synchronous "
    "inference, warm-up then >= min_iters iterations and >= min_time_s per model, teacher and "
    "student interleaved in rounds; OpenVINO compiled with its profile's performance hint "
    "(LATENCY: one stream, one request, as benchmark_app -hint latency)"
)


def _timed(call: Callable[[], object], iters: int, seconds: float) -> list[float]:
    """Run ``call`` at least ``iters`` times and ``seconds`` long; each latency in ms."""
    times: list[float] = []
    clock = time.perf_counter_ns
    end = clock() + int(seconds * 1e9)
    while len(times) < iters or clock() < end:
        t0 = clock()
        call()
        times.append((clock() - t0) / 1e6)
    return times


def measure(calls: dict[str, Callable], opts: dict) -> dict[str, list[float]]:
    """Warm up each call, then time them interleaved in ``rounds`` slices."""
    for call in calls.values():
        _timed(call, opts["warmup_iters"], opts["warmup_s"])
    samples: dict[str, list[float]] = {k: [] for k in calls}
    rounds = opts["rounds"]
    for _ in range(rounds):
        for name, call in calls.items():
            samples[name] += _timed(
                call, -(-opts["min_iters"] // rounds), opts["min_time_s"] / rounds
            )
    return samples


def summarize(ms: list[float]) -> dict[str, float]:
    """p50/p90/p99, mean, standard deviation and coefficient of variation, in ms."""
    a = np.asarray(ms)
    mean, std = float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "std_ms": std,
        "cv": std / mean if mean else 0.0,
        "iterations": len(a),
    }


def fingerprint() -> dict:
    """The machine and software a figure was measured on."""
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_flags": [f for f in wanted if f in flags],
        "versions": versions,
    }


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(x[np.arange(size) % len(x)])


def _bench_target(compiled: Artifact, target: Target, x: np.ndarray, opts: dict) -> dict:
    """Time the target's shipped models (an INT8 model that failed its gate is not there)."""
    module = backend(target.backend, target.name)
    entries = compiled.checks["targets"][target.name]
    models = [m for m in MODELS if entries[m]["shipped"]]
    runners, result = {}, {}
    for name in models:
        t0 = time.perf_counter()
        path = compiled.path / target.name / entries[name]["file"]
        runners[name] = module.load(path, target)
        t1 = time.perf_counter()
        runners[name].run(_batch(x, 1))
        result[name] = {
            "cold_start": {"load_s": t1 - t0, "first_inference_s": time.perf_counter() - t1},
            "runtime": runners[name].info,
            "latency": {},
        }
    for size in opts["batch_sizes"]:
        xb = _batch(x, size)
        bound = measure({n: r.bind(xb) for n, r in runners.items()}, opts)
        e2e = measure({n: (lambda r=r, xb=xb: r.run(xb)) for n, r in runners.items()}, opts)
        for name in models:
            stats = summarize(bound[name])
            stats["throughput_per_s"] = size * 1000.0 / stats["p50_ms"]
            stats["end_to_end"] = summarize(e2e[name])
            result[name]["latency"][str(size)] = stats
    if len(models) == len(MODELS):
        result["speedup"] = {
            str(s): result["teacher"]["latency"][str(s)]["p50_ms"]
            / result["student"]["latency"][str(s)]["p50_ms"]
            for s in opts["batch_sizes"]
        }
    return result


def benchmark(
    run_dir: str | Path,
    progress: Progress = _quiet,
    *,
    batch_sizes: Annotated[list[int], Range(1, 65536)] = [1, 64],  # noqa: B006 (read-only)
    warmup_iters: Annotated[int, Range(0)] = 20,
    warmup_s: Annotated[float, Range(0.0)] = 0.2,
    min_iters: Annotated[int, Range(1)] = 100,
    min_time_s: Annotated[float, Range(0.0)] = 0.5,
    rounds: Annotated[int, Range(1)] = 5,
) -> Artifact:
    """Measure teacher and student latency on every compiled target; writes RUN/benchmark."""
    compiled = Artifact.open(Path(run_dir) / "compile", "compile", f"kdexport compile {run_dir}")
    export_art = Artifact.open(Path(run_dir) / "export", "export", f"kdexport export {run_dir}")
    with np.load(export_art.file("io_sample.npz")) as f:
        x = f["x"]
    opts = {
        "batch_sizes": batch_sizes,
        "warmup_iters": warmup_iters,
        "warmup_s": warmup_s,
        "min_iters": min_iters,
        "min_time_s": min_time_s,
        "rounds": rounds,
    }
    names = [
        n for n, t in compiled.checks["targets"].items() if any(t[m]["shipped"] for m in MODELS)
    ]
    with Artifact.create(Path(run_dir) / "benchmark", "benchmark", opts, [compiled]) as w:
        w.checks.update(method=METHOD, environment=fingerprint(), targets={})
        for i, name in enumerate(names):
            target = Target(**compiled.checks["targets"][name]["profile"])
            w.checks["targets"][name] = _bench_target(compiled, target, x, opts)
            progress("benchmark", i + 1, len(names), name)
    return w.artifact
