"""Latency methodology and the environment fingerprint.

Method (as OpenVINO's ``benchmark_app``): inputs bound once outside the timed loop, warm-up by
iterations and time, then at least ``min_iters`` iterations and ``min_time_s`` seconds per model.
Models compared are measured interleaved, in ``rounds`` alternating slices, so a drift in the
machine's speed hits both; a comparison is the median of the per-round ratios with their
interquartile range (``paired``), never a ratio of two separate medians. Each measurement is
repeated with fresh sessions. The noise monitor (``read_noise``: load average, other processes'
share of the CPUs from /proc/stat, CPU frequency, throttling) is sampled around every round; a
figure is unstable, with its reasons, when others used over 20% of the CPUs, its rounds spread
over 10% (IQR / median), or its repeats' medians over 5%.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, TypedDict

import numpy as np

from kdexport.bundle import runner as bundle_runner
from kdexport.bundle.runner import (
    available_cpus,
    measure,
    measure_rounds,
    noise_between,
    noise_summary,
    paired,
    parse_cpus,
    pin,
    read_noise,
    round_spread,
    rss_mb,
    summarize,
    timed,
    unstable_reasons,
)

METHOD = (
    "inputs bound once (ONNX Runtime IO binding / OpenVINO shared-memory tensor), synchronous "
    "inference, warm-up then >= min_iters iterations and >= min_time_s per model, teacher and "
    "student interleaved in rounds, repeated with fresh sessions; OpenVINO compiled with its "
    "profile's performance hint (LATENCY: one stream, one request, as benchmark_app -hint latency)"
)
UNSTABLE_CV = 0.05  # repeats whose medians spread more than this are flagged

# The timing loop itself lives in the bundle runner, which must run on devices with only numpy
# and onnxruntime: one copy of the method serves the workstation and the device.
__all__ = [
    "METHOD",
    "Pooled",
    "available_cpus",
    "fingerprint",
    "measure",
    "measure_rounds",
    "median_ci95",
    "noise_between",
    "noise_summary",
    "paired",
    "parse_cpus",
    "pin",
    "pooled",
    "read_noise",
    "round_spread",
    "rss_mb",
    "summarize",
    "timed",
    "unstable_reasons",
]


def median_ci95(ms: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (order statistics; the normal
    approximation of the binomial, ranks n/2 -/+ 1.96 sqrt(n)/2)."""
    a = np.sort(np.asarray(ms))
    n = len(a)
    half = 1.96 * np.sqrt(n) / 2
    lo, hi = int(np.floor(n / 2 - half)), int(np.ceil(n / 2 + half))
    return float(a[max(lo, 0)]), float(a[min(hi, n - 1)])


class Pooled(TypedDict):
    """What ``pooled`` returns: ``summarize``'s figures (the runner's, which must stay free of
    kdexport) and the spread over repeats and rounds. The benchmark stage records it per model
    and measuring point in its manifest's checks (JSON; ``benchmark.Latency``)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    iterations: int
    p50_ci95_ms: list[float]
    repeat_medians_ms: list[float]
    repeat_cv: float
    round_medians_ms: list[float]
    round_spread: float
    noise: dict[str, Any]  # noise_summary: the worst share of others, load, frequencies
    unstable: bool
    unstable_reasons: list[str]


def pooled(repeats: list[list[list[float]]], noise: list[dict] | None = None) -> Pooled:
    """Statistics of all repeats' samples (each repeat a list of rounds, each round a list of
    samples), the repeats' and the rounds' medians, their spread, the CI, and whether the figure
    is unstable (``unstable_reasons``: the reasons, empty when it is not). A repeat given as a
    flat list of samples is one round."""
    repeats = [r if r and isinstance(r[0], list) else [r] for r in repeats]
    flat = [v for rep in repeats for rnd in rep for v in rnd]
    stats = summarize(flat)
    medians = [float(np.median([v for rnd in rep for v in rnd])) for rep in repeats]
    spread = float(np.std(medians) / np.mean(medians)) if len(medians) > 1 else 0.0
    rounds = [float(np.median(rnd)) for rep in repeats for rnd in rep]
    lo, hi = median_ci95(flat)
    quiet = noise_summary(noise or [])
    reasons = unstable_reasons(quiet, round_spread(rounds))
    if spread > UNSTABLE_CV:
        reasons.append(f"repeats' medians spread {spread:.0%} (bound {UNSTABLE_CV:.0%})")
    return {
        **stats,
        "p50_ci95_ms": [lo, hi],
        "repeat_medians_ms": medians,
        "repeat_cv": spread,
        "round_medians_ms": rounds,
        "round_spread": round_spread(rounds),
        "noise": quiet,
        "unstable": bool(reasons),
        "unstable_reasons": reasons,
    }


def _gpus() -> list[dict]:
    """NVIDIA GPUs and their driver, from nvidia-smi where it exists."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = ("name", "driver", "memory")
    return [
        dict(zip(keys, (p.strip() for p in line.split(",")), strict=False))
        for line in out.splitlines()
    ]


def fingerprint() -> dict:
    """The machine and software a figure was measured on: the device runner's fingerprint (CPU
    and flags, cores, OS) with every relevant library's version and the GPUs."""
    versions = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {**bundle_runner.fingerprint(), "gpus": _gpus(), "versions": versions}
