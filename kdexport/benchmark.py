"""The ``benchmark`` stage: latency, throughput, cold start and memory of compiled models.

On a run directory it times teacher and student, interleaved, on every compiled target
(``benchmark``); on a single ONNX file it times that model on any targets (``benchmark_onnx``).
Peak memory is measured in a child process per model and target, so that one model's
allocations do not hide in another's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NotRequired, TypedDict

import numpy as np

from kdexport import modalities
from kdexport.artifact import Artifact
from kdexport.backends import backend
from kdexport.backends.profiles import Target, load_target
from kdexport.bundle.runner import parse_point
from kdexport.compile import shipped_targets
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.feeds import Feed, Inputs, for_model, load_sample, resolve
from kdexport.onnxfile import check_onnx_file
from kdexport.options import Range, stage_options
from kdexport.rundir import MODELS
from kdexport.timing import (
    METHOD,
    Pooled,
    available_cpus,
    fingerprint,
    measure_rounds,
    noise_summary,
    paired,
    pin,
    pooled,
    rss_mb,
    unstable_reasons,
)

if TYPE_CHECKING:  # the stages before: only their manifests are read (export.py loads torch)
    from kdexport.compile import CompileChecks
    from kdexport.export import ExportChecks


# What this stage records in RUN/benchmark/manifest.json's checks: JSON on disk, so TypedDicts,
# which describe it exactly at no run-time cost; report and plan read them.
class Latency(Pooled):
    """One model at one measuring point ("8", or a text shape "1x128"): compute only (inputs
    bound), with end-to-end (numpy in and out) beside it."""

    throughput_per_s: float
    tokens_per_s: NotRequired[float]  # a text shape "BxS"
    end_to_end: Pooled


class ColdStart(TypedDict):
    load_s: float
    first_inference_s: float


class Memory(TypedDict):
    """``peak_memory``: a fresh process's resident memory (None where /proc is not there)."""

    peak_rss_mb: float | None
    runtime_baseline_mb: NotRequired[float]
    model_mb: NotRequired[float]
    note: NotRequired[str]


class ModelTimings(TypedDict):
    latency: dict[str, Latency]  # measuring point -> figures
    cold_start: ColdStart
    runtime: dict[str, Any]  # the runner's ``info``
    memory: NotRequired[Memory]  # benchmark.memory


class SpeedupDetail(TypedDict):
    ratio: float
    iqr: list[float]
    rounds: int
    unstable: bool
    unstable_reasons: list[str]


class TargetTimings(TypedDict):
    """One target: each shipped model (an INT8 one that failed its gate is not timed) and,
    when both are, teacher / student per measuring point."""

    teacher: NotRequired[ModelTimings]
    student: NotRequired[ModelTimings]
    speedup: NotRequired[dict[str, float]]
    speedup_detail: NotRequired[dict[str, SpeedupDetail]]


class Settings(TypedDict):
    """What both sides of every comparison ran with (``settings``)."""

    cpus: list[int] | None
    pinned: bool
    threads: int
    until_stable_s: float


class BenchmarkChecks(TypedDict):
    method: str
    environment: dict[str, Any]  # ``timing.fingerprint``: CPU, cores, OS, versions, GPUs
    settings: Settings
    targets: dict[str, TargetTimings]


QUICK = {
    "warmup_iters": 2,
    "warmup_s": 0.0,
    "min_iters": 10,
    "min_time_s": 0.0,
    "rounds": 1,
    "repeats": 1,
    "memory": False,
}


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(x[np.arange(size) % len(x)])


def _cold_start(load: Callable, x1: np.ndarray | Feed):
    t0 = time.perf_counter()
    runner = load()
    t1 = time.perf_counter()
    runner.run(x1)
    return runner, {"load_s": t1 - t0, "first_inference_s": time.perf_counter() - t1}


def time_models(
    loaders: dict[str, Callable], x: np.ndarray | Callable[[int], Feed], opts: dict
) -> dict:
    """Time each model (name -> loader of a fresh runner) at every batch size, interleaved.

    ``x`` is a sample batch (cycled to each size) or a function of the size that gives the
    inputs by name. Per batch size and repeat every model gets a fresh session; compute-only
    (bound inputs) and end-to-end (numpy in and out) latency are pooled over the repeats.
    """
    inputs = x if callable(x) else (lambda size: _batch(x, size))
    # A text model is timed per (batch, sequence length) shape, "BxS", from ``x(shape)``.
    result: dict[str, dict] = {n: {"latency": {}} for n in loaders}
    e2e_opts = {**opts, "min_time_s": opts["min_time_s"] / 2, "until_stable_s": 0}
    pairs: dict[str, dict] = {}
    for size in opts["batch_sizes"]:
        xb = inputs(size)
        bound: dict[str, list] = {n: [] for n in loaders}
        e2e: dict[str, list] = {n: [] for n in loaders}
        noise: list[dict] = []
        for _ in range(opts["repeats"]):
            runners = {}
            for n, load in loaders.items():
                runners[n], cold = _cold_start(load, inputs(1))
                result[n].setdefault("cold_start", cold)
                result[n].setdefault("runtime", runners[n].info)
            timed = measure_rounds({n: r.bind(xb) for n, r in runners.items()}, opts)
            noise += timed["noise"]
            for n, rounds in timed["samples"].items():
                bound[n].append(rounds)
            calls = {n: (lambda r=r, xb=xb: r.run(xb)) for n, r in runners.items()}
            for n, rounds in measure_rounds(calls, e2e_opts)["samples"].items():
                e2e[n].append(rounds)
        for n in loaders:
            stats = pooled(bound[n], noise)
            point = parse_point(size)
            stats["throughput_per_s"] = point["batch"] * 1000.0 / stats["p50_ms"]
            if "seq" in point:
                stats["tokens_per_s"] = point["batch"] * point["seq"] * 1000.0 / stats["p50_ms"]
            stats["end_to_end"] = pooled(e2e[n])
            result[n]["latency"][str(size)] = stats
        if len(loaders) == 2:
            a, b = (result[n]["latency"][str(size)]["round_medians_ms"] for n in loaders)
            pairs[str(size)] = {**paired(a, b), "noise": noise_summary(noise)}
    if pairs:
        result["ratios"] = pairs  # first model / second, per round (``timing.paired``)
    return result


def speedup(result: dict) -> dict[str, SpeedupDetail]:
    """Teacher / student per batch size: the median of per-round ratios, its IQR, and why it
    is unstable (others' CPU share, or the ratios spread wider than ``SPREAD_BOUND``)."""
    out = {}
    for size, r in result["ratios"].items():
        reasons = unstable_reasons(r["noise"], r["rel_iqr"])
        out[size] = SpeedupDetail(
            ratio=r["ratio"],
            iqr=r["iqr"],
            rounds=r["rounds"],
            unstable=bool(reasons),
            unstable_reasons=reasons,
        )
    return out


def peak_memory(path: Path, target: Target, batch: np.ndarray | Feed) -> Memory:
    """Peak resident memory of a fresh process that loads ``path`` and runs it 50 times."""
    with tempfile.TemporaryDirectory() as tmp:
        # Positional arrays and their names apart: input names may hold '/' (gpu_0/data_0).
        feed = batch if isinstance(batch, dict) else {"": batch}
        np.savez(Path(tmp) / "x.npz", *feed.values())
        (Path(tmp) / "names.json").write_text(json.dumps(list(feed)))
        args = [
            sys.executable,
            "-m",
            "kdexport.benchmark",
            str(path),
            json.dumps(target.as_dict()),
            tmp,
        ]
        # The child imports this same kdexport, installed or run from a source tree.
        here = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
        }
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    if done.returncode:
        raise KdxError(
            f"memory probe of {path.name} on {target.name} failed: {done.stderr.strip()[-300:]}"
        )
    return json.loads(done.stdout.splitlines()[-1])


def _memory_child(path: str, target_json: str, folder: str) -> None:
    """In the child: resident memory after imports, then the peak after loading and running the
    model (``timing.rss_mb``: this process's own peak, not its forked parent's)."""
    target = Target.from_dict(json.loads(target_json))
    names = json.loads((Path(folder) / "names.json").read_text())
    with np.load(Path(folder) / "x.npz") as f:
        arrays = [f[f"arr_{i}"] for i in range(len(names))]
    x = arrays[0] if names == [""] else dict(zip(names, arrays, strict=True))
    module = backend(target.backend, target.name)
    before = rss_mb()[0]
    runner = module.load(Path(path), target)
    for _ in range(50):
        runner.run(x)
    peak = rss_mb()[1]
    if before is None or peak is None:
        print(json.dumps({"peak_rss_mb": None, "note": "no /proc/self/status here"}))
        return
    print(
        json.dumps({"peak_rss_mb": peak, "runtime_baseline_mb": before, "model_mb": peak - before})
    )


THREAD_OPTION = {"ort": "intra_op_threads", "openvino": "inference_num_threads"}


def with_threads(target: Target, threads: int) -> Target:
    """The target with its runtime's thread count set explicitly: ``threads``, else the
    profile's own, else one per CPU this process may use (never the runtime's "0 = all")."""
    key = THREAD_OPTION.get(target.backend)
    if key is None:
        return target
    count = threads or int(target.options.get(key, 0)) or available_cpus()
    return replace(target, options={**target.options, key: count})


def settings(opts: dict) -> Settings:
    """Pin to ``opts["cpus"]`` (if given) and say what both sides of every comparison run
    with: the CPUs, the thread count (resolved) and whether rounds go on until stable."""
    cpus = opts.get("cpus") or ""
    if cpus:
        try:
            pin(cpus)
        except ValueError as e:
            raise KdxError(f"--cpus (benchmark.cpus): {e}") from None
    return {
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "pinned": bool(cpus),
        "threads": opts.get("threads") or available_cpus(),
        "until_stable_s": opts.get("until_stable_s", 0),
    }


def _bench_target(compiled: Artifact, target: Target, x, opts: dict) -> TargetTimings:
    """Time the target's shipped models (an INT8 model that failed its gate is not there);
    ``x``: the held-out sample, or for a text model the inputs of a shape (``text_inputs``)."""
    module = backend(target.backend, target.name)
    checks: CompileChecks = compiled.checks
    entries = checks["targets"][target.name]
    paths = {
        m: compiled.path / target.name / entries[m]["file"] for m in MODELS if entries[m]["shipped"]
    }
    target = with_threads(target, opts["threads"])
    loaders = {m: (lambda p=paths[m]: module.load(p, target)) for m in MODELS if m in paths}
    result = time_models(loaders, x, opts)
    if opts["memory"]:
        for m, p in paths.items():
            result[m]["memory"] = peak_memory(p, target, x(1) if callable(x) else _batch(x, 1))
    if len(paths) == len(MODELS):
        detail = speedup(result)
        result["speedup"] = {s: d["ratio"] for s, d in detail.items()}
        result["speedup_detail"] = detail
    result.pop("ratios", None)
    return result


def benchmark(
    run: Run,
    *,
    batch_sizes: Annotated[list[int], Range(1, 65536)] = [1, 64],  # noqa: B006 (read-only)
    warmup_iters: Annotated[int, Range(0)] = 20,
    warmup_s: Annotated[float, Range(0.0)] = 0.2,
    min_iters: Annotated[int, Range(1)] = 100,
    min_time_s: Annotated[float, Range(0.0)] = 0.5,
    rounds: Annotated[int, Range(1)] = 5,
    repeats: Annotated[int, Range(1, 100)] = 2,
    memory: bool = True,
    threads: Annotated[int, Range(0, 1024)] = 0,
    cpus: str = "",
    until_stable_s: Annotated[float, Range(0.0)] = 0.0,
    stable_bound: Annotated[float, Range(0.0)] = 0.05,
    **modality_options,
) -> Artifact:
    """Measure teacher and student on every compiled target; writes RUN/benchmark.

    The run's modality turns the options into its measuring points: batch sizes, or for text
    ``text_shapes`` ("BxS": batch x sequence length, tokens per second beside samples per
    second); ``modality_options`` are its keys of [benchmark].

    ``threads``: the runtimes' intra-op threads (0: one per CPU this process may use, resolved
    and recorded); ``cpus``: pin to these CPUs ("0", "0-1"); ``until_stable_s``: go on with
    rounds, up to this many seconds, until the speed-up's IQR is under ``stable_bound`` of it.
    """
    if not batch_sizes:
        raise KdxError("benchmark.batch_sizes is empty; give at least one, e.g. [1, 64]")
    opts = {**stage_options(benchmark, locals()), **modality_options}
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return _benchmark(run, opts)
    finally:
        if affinity is not None and opts["cpus"]:
            os.sched_setaffinity(0, affinity)  # pinned for this stage only


def _benchmark(run: Run, opts: dict) -> Artifact:
    fixed = settings(opts)
    compiled, exported = run.open("compile"), run.open("export")
    comp: CompileChecks = compiled.checks
    exp: ExportChecks = exported.checks
    modality = modalities.get(exp.get("modality", modalities.DEFAULT))
    inputs, _ = load_sample(exported.file("io_sample.npz"))
    sample = for_model(inputs, [i["name"] for i in exp["student"]["inputs"]])
    points = modality.points(opts)
    modality.check_points(points, exp.get("preprocessing", {}))
    x = modality.timing_inputs(sample)
    opts = {**opts, "batch_sizes": points}
    names = shipped_targets(comp)
    with Artifact.create(run.folder("benchmark"), "benchmark", opts, [compiled]) as w:
        checks: BenchmarkChecks = {
            "method": METHOD,
            "environment": fingerprint(),
            "settings": fixed,
            "targets": {},
        }
        w.checks.update(checks)
        for i, name in enumerate(names):
            target = Target.from_dict(comp["targets"][name]["profile"])
            checks["targets"][name] = _bench_target(compiled, target, x, opts)
            run.progress("benchmark", i + 1, len(names), name)
    return w.artifact


def _batch_sizes(inputs: Inputs, file: str, opts: dict, given: bool) -> list[int]:
    """The batch sizes to time: the options', --shape's, or the model's fixed batch."""
    sizes = opts["batch_sizes"]
    if inputs.batch is None:
        return sizes if given or inputs.shape_batch is None else [inputs.shape_batch]
    if given and set(sizes) != {inputs.batch}:
        bad = next(b for b in sizes if b != inputs.batch)
        if not inputs.batch_axis:
            raise KdxError(
                f"{file} has no batch axis ({inputs.describe()}); batch size {bad} is not "
                "possible: drop --batch-sizes, it is timed at its fixed shape"
            )
        raise KdxError(
            f"{file} has a static batch of {inputs.batch}; batch size {bad} is not possible"
        )
    return [inputs.batch]


def benchmark_onnx(
    path: str | Path,
    targets: list[str],
    shape: list[int] | dict[str | None, list[int]] | None,
    opts: dict,
    batch_sizes_given: bool = True,
) -> dict:
    """Time one ONNX model on each target (compiled into a temporary folder) on random inputs.

    ``shape``: one input's full shape, or input name -> shape (``kdexport.feeds``). A model
    with a static batch axis is timed at that batch unless batch sizes were given.
    """
    path = Path(path)
    facts = check_onnx_file(path)
    given = {None: shape} if isinstance(shape, list) else dict(shape or {})
    inputs = resolve(facts, given, path.name)
    opts = {**opts, "batch_sizes": _batch_sizes(inputs, path.name, opts, batch_sizes_given)}
    results = {"model": str(path), "method": METHOD, "environment": fingerprint(), "targets": {}}
    results["settings"] = settings(opts)
    results["inputs"] = {
        n: {"dtype": inputs.dtypes[n], "shape": s} for n, s in inputs.shapes.items()
    }
    for name in targets:
        target = load_target(name)
        if reason := target.unavailable_reason():
            raise KdxError(f"target '{target.name}' is not available here: {reason}")
        if target.precision == "int8":
            raise KdxError(
                f"target '{target.name}' needs calibration data: benchmark a run directory instead"
            )
        target = with_threads(target, opts.get("threads", 0))
        results["targets"][target.name] = _time_file(path, target, inputs, opts)
    return results


def _time_file(path: Path, target: Target, inputs: Inputs, opts: dict) -> dict:
    """Compile ``path`` for ``target`` into a temporary folder and time it; a runtime that
    cannot run the model on the generated inputs is a KdxError naming the target and why."""
    module = backend(target.backend, target.name)
    with tempfile.TemporaryDirectory() as tmp:
        main = module.compile(path, Path(tmp), "model", target, None)
        try:
            timed = time_models({"model": lambda: module.load(main, target)}, inputs.feed, opts)
        except module.RUNTIME_ERRORS as e:
            raise KdxError(
                f"target '{target.name}': {module.RUNTIME} cannot run {path.name} on inputs "
                f"{inputs.describe()} (random: see kdexport.feeds): {module.explain(e)}"
            ) from None
        if opts["memory"]:
            timed["model"]["memory"] = peak_memory(main, target, inputs.feed(1))
    return timed


if __name__ == "__main__":
    _memory_child(*sys.argv[1:])
