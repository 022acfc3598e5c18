"""The ``serve`` verb: how many requests a second each compiled model serves, measured as MLPerf
Inference measures it (``kdexport serve-bench RUN``).

MLCommons' LoadGen drives every compiled target's teacher and student in this process. Its
Offline scenario queues every sample at once (samples per second); its Server scenario sends
queries as a Poisson process at a rate, and calls the rate VALID when the 99th percentile of
latency (queueing included) stays under the bound. The highest VALID rate is found by
bisection below the Offline throughput, each trial a LoadGen run of its own.

Each backend says how it serves many requests at once (``throughput_settings``: callers of one
ONNX Runtime session with the CPUs' threads divided among them; OpenVINO's THROUGHPUT hint,
its streams and one infer request each); each is tried without and with dynamic batching (a
worker joins up to ``max_batch`` queued requests, waiting up to ``batch_wait_ms`` for them), and
the setting that serves the most at the bound is the model's figure. RUN/serve holds the
figures (manifest checks), LoadGen's summary and detail logs of each setting's Offline run and
of its Server run at the rate found, and capacity.png.
"""

from __future__ import annotations

import importlib
import json
import math
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Annotated, NotRequired, TypedDict

from kdexport.artifact import Artifact
from kdexport.backends import Throughput, backend
from kdexport.backends.profiles import Target
from kdexport.bundle.runner import format_point, parse_point
from kdexport.chart import capacity_chart
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.feeds import for_model, load_sample
from kdexport.options import Range, stage_options
from kdexport.rundir import MODELS
from kdexport.timing import available_cpus, fingerprint

SCENARIOS = ("server", "offline")
LOADGEN_INSTALL = "pip install 'kdexport[serve]' (MLCommons' mlcommons-loadgen)"
# A run lasts its duration and at least this many queries: LoadGen's default for Offline; for
# Server, enough for its early-stopping estimate to confirm a 99th percentile (with none over
# the bound it needs 459 queries; each query over the bound asks for more).
MIN_QUERIES = {"offline": 100, "server": 1024}
SAMPLES = 1024  # the query sample library's size: every sample is the same request
KEPT_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")


class Trial(TypedDict):
    """One LoadGen Server run: the rate asked for, the rate LoadGen scheduled, its p99."""

    target_qps: float
    scheduled_qps: float
    p99_ms: float
    valid: bool


class SettingCapacity(TypedDict):
    """One way of serving a model: LoadGen's figures with it."""

    setting: str  # the backend's throughput setting, and the batching
    options: dict  # the profile's options as changed for it
    workers: int  # requests in flight at once
    max_batch: int
    offline_sps: float
    offline_valid: bool
    qps_at_p99: NotRequired[float]  # 0: no rate met the bound
    p50_ms: NotRequired[float]
    p90_ms: NotRequired[float]
    p99_ms: NotRequired[float]
    lowest_p99_ms: NotRequired[float]
    valid: NotRequired[bool]
    trials: NotRequired[list[Trial]]
    logs: str  # folder of LoadGen's logs, relative to RUN/serve


class ModelCapacity(TypedDict):
    """A model on a target: its best setting's figures, and every setting tried."""

    setting: str
    qps_at_p99: NotRequired[float]
    p50_ms: NotRequired[float]
    p90_ms: NotRequired[float]
    p99_ms: NotRequired[float]
    valid: NotRequired[bool]
    offline_sps: float
    servers_for_qps: NotRequired[int]
    settings: list[SettingCapacity]


class ServeChecks(TypedDict):
    method: str
    environment: dict
    p99_ms: float
    qps: float  # the goal "servers needed" is for (0: none)
    point: str  # one request's inputs
    cores: int
    targets: dict[str, dict]  # name -> MODELS -> ModelCapacity, capacity_ratio, ...


METHOD = (
    "MLCommons LoadGen in this process, PerformanceOnly: Offline (every sample queued) and "
    "Server (Poisson arrivals; a rate is VALID when its p99 latency, queueing included, is under "
    "the bound), the highest VALID rate found by bisection below the Offline throughput"
)


def loadgen() -> ModuleType:
    """LoadGen's module, or one line naming the extra."""
    try:
        return importlib.import_module("mlperf_loadgen")
    except ImportError as e:
        raise KdxError(f"serve-bench needs LoadGen ({e}): {LOADGEN_INSTALL}") from None


def check_scenarios(scenarios: list[str]) -> None:
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not scenarios:
        raise KdxError(
            f"serve scenario {', '.join(map(repr, bad)) or '(none)'}: give one or more of "
            f"{', '.join(SCENARIOS)}"
        )


class Workers:
    """Queued samples served by one thread per run function: a thread takes the first queued
    sample and the ones that arrive within the wait, up to the batch size, runs them as one
    inference and tells LoadGen they are complete."""

    def __init__(self, lg: ModuleType, runs: list[Callable], feeds: dict, max_batch: int, wait_s):
        self.lg, self.feeds, self.max_batch, self.wait_s = lg, feeds, max_batch, wait_s
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: list[tuple[int, Exception]] = []
        self.threads = [threading.Thread(target=self._serve, args=(r,), daemon=True) for r in runs]
        for t in self.threads:
            t.start()

    def issue(self, samples) -> None:
        for s in samples:
            self.queue.put(s)

    def flush(self) -> None:
        pass

    def _take(self) -> list | None:
        first = self.queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                s = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if s is None:
                self.queue.put(None)
                break
            batch.append(s)
        return batch

    def _serve(self, run: Callable) -> None:
        while (batch := self._take()) is not None:
            try:
                run(self.feeds[len(batch)])
            except Exception as e:  # the runtime's own types; reported once LoadGen is done
                self.errors.append((len(batch), e))
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, 0, 0) for s in batch])

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()


def _results(detail: Path) -> dict:
    """LoadGen's ``result_*`` entries of its detail log, without the prefix."""
    out = {}
    for line in detail.read_text(encoding="utf-8").splitlines():
        if line.startswith(":::MLLOG"):
            entry = json.loads(line.removeprefix(":::MLLOG"))
            if entry["key"].startswith("result_"):
                out[entry["key"].removeprefix("result_")] = entry["value"]
    return out


def _loadgen_run(lg, workers: Workers, scenario: str, qps: float, opts: dict, out: Path) -> dict:
    """One LoadGen test of ``scenario`` at ``qps`` (Offline: the expected rate); its results."""
    settings = lg.TestSettings()
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(opts["duration_s"] * 1000)
    settings.min_query_count = MIN_QUERIES[scenario]
    if scenario == "server":
        settings.scenario = lg.TestScenario.Server
        settings.server_target_qps = qps
        settings.server_target_latency_ns = int(opts["p99_ms"] * 1e6)
        settings.server_target_latency_percentile = 0.99
    else:
        settings.scenario = lg.TestScenario.Offline
        settings.offline_expected_qps = qps
    log = lg.LogSettings()
    out.mkdir(parents=True, exist_ok=True)
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut = lg.ConstructSUT(workers.issue, workers.flush)
    qsl = lg.ConstructQSL(SAMPLES, SAMPLES, lambda _: None, lambda _: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    for p in out.iterdir():
        if p.name not in KEPT_LOGS:
            p.unlink()
    return _results(out / "mlperf_log_detail.txt")


def _ms(results: dict, percentile: str) -> float:
    return results[f"{percentile}_percentile_latency_ns"] / 1e6


def _offline(lg, workers: Workers, estimate: float, opts: dict, out: Path) -> dict:
    """Offline samples per second; LoadGen queues the expected rate times the duration, so a
    run that ends early is run again at the rate it measured."""
    for _ in range(3):
        r = _loadgen_run(lg, workers, "offline", estimate, opts, out)
        if r["validity"] == "VALID" or r["min_duration_met"]:
            break
        estimate = r["samples_per_second"] * 1.2
    return r


def _peak(lg, workers: Workers, ceiling: float, opts: dict, out: Path) -> dict:
    """The highest VALID Server rate by bisection in (0, ``ceiling``]: the trials, and the
    figures at the best rate (LoadGen's logs of that run kept in ``out``)."""
    lo, hi, best, trials = 0.0, ceiling, None, []
    qps = ceiling / 2
    for i in range(opts["search_steps"]):
        at = out.parent / f".{out.name}.trial{i}"
        r = _loadgen_run(lg, workers, "server", qps, opts, at)
        valid = r["validity"] == "VALID"
        trials.append(
            {
                "target_qps": qps,
                "scheduled_qps": r["scheduled_samples_per_sec"],
                "p99_ms": _ms(r, "99.00"),
                "valid": valid,
            }  # fmt: skip
        )
        if valid and (best is None or qps > best[0]):
            best = (qps, r)
            shutil.rmtree(out, ignore_errors=True)
            at.rename(out)
        else:
            shutil.rmtree(at)
        lo, hi = (qps, hi) if valid else (lo, qps)
        qps = (lo + hi) / 2
    if best is None:
        return {"qps_at_p99": 0.0, "valid": False, "trials": trials,
                "lowest_p99_ms": min(t["p99_ms"] for t in trials)}  # fmt: skip
    r = best[1]
    return {
        "qps_at_p99": r["scheduled_samples_per_sec"],
        **{f"p{p}_ms": _ms(r, f"{p}.00") for p in (50, 90, 99)},
        "valid": True,
        "trials": trials,
    }


def _estimate(runs: list[Callable], feeds: dict, max_batch: int) -> float:
    """Samples per second of a few batches on one worker, times the workers (warms them up)."""
    for run in runs:
        run(feeds[1])
        run(feeds[max_batch])
    start = time.perf_counter()
    for _ in range(5):
        runs[0](feeds[max_batch])
    return 5 * max_batch * len(runs) / (time.perf_counter() - start)


def _serve_setting(lg, module, path, target, way: Throughput, batch, at, opts, out) -> dict:
    """One model served one way (``way``, dynamic batching up to ``batch``)."""
    runner = module.load(path, replace(target, options={**target.options, **way.options}))
    runs = runner.workers(way.workers)
    feeds = {k: at(k) for k in range(1, batch + 1)}
    try:
        estimate = _estimate(runs, feeds, batch)
    except module.RUNTIME_ERRORS as e:
        raise KdxError(
            f"target '{target.name}': {module.RUNTIME} cannot run {path.name} at batch {batch} "
            f"(serve.max_batch needs a model whose batch axis is free): {module.explain(e)}"
        ) from None
    workers = Workers(lg, runs, feeds, batch, opts["batch_wait_ms"] / 1000 if batch > 1 else 0)
    try:
        off = _offline(lg, workers, estimate, opts, out / "offline")
        result: SettingCapacity = {
            "setting": way.label + (f", batches up to {batch}" if batch > 1 else ""),
            "options": way.options,
            "workers": len(runs),
            "max_batch": batch,
            "offline_sps": off["samples_per_second"],
            "offline_valid": off["validity"] == "VALID",
            "logs": "",
        }
        if "server" in opts["scenarios"]:
            result |= _peak(lg, workers, off["samples_per_second"], opts, out / "server")
    finally:
        workers.close()
    if workers.errors:
        size, e = workers.errors[0]
        raise KdxError(
            f"target '{target.name}': {module.RUNTIME} failed on {path.name} at batch {size} "
            f"while serving: {module.explain(e)}"
        )
    return result


def _best(settings: list[SettingCapacity], server: bool) -> SettingCapacity:
    key = "qps_at_p99" if server else "offline_sps"
    return max(settings, key=lambda s: s[key])


def _serve_model(lg, module, path, target, at, opts, out: Path, progress) -> ModelCapacity:
    settings = []
    ways = module.throughput_settings(target, available_cpus())
    batches = sorted({1, opts["max_batch"]})
    for i, (way, batch) in enumerate((w, b) for w in ways for b in batches):
        folder = out / f"setting{i}"
        result = _serve_setting(lg, module, path, target, way, batch, at, opts, folder)
        result["logs"] = folder.relative_to(out.parents[2]).as_posix()  # from RUN/serve
        settings.append(result)
        progress(f"{target.name} {path.stem}", i + 1, len(ways) * len(batches), result["setting"])
    server = "server" in opts["scenarios"]
    best = _best(settings, server)
    figures: ModelCapacity = {"setting": best["setting"], "offline_sps": best["offline_sps"]}
    if server:
        figures |= {k: best[k] for k in ("qps_at_p99", "valid") if k in best}
        figures |= {k: best[k] for k in ("p50_ms", "p90_ms", "p99_ms") if k in best}
        if opts["qps"] and best["qps_at_p99"]:
            figures["servers_for_qps"] = math.ceil(opts["qps"] / best["qps_at_p99"])
    return {**figures, "settings": settings}


def _request_point(point: str, bench_points: list[str]) -> dict:
    """One request's measuring point: ``point``, else the benchmark's first at batch 1."""
    try:
        dims = parse_point(point or bench_points[0])
    except ValueError as e:
        raise KdxError(f"serve.point: {e}") from None
    if point and dims["batch"] != 1:
        raise KdxError(f"serve.point '{point}': one request is batch 1 (batching: serve.max_batch)")
    return {**dims, "batch": 1}


def serve(
    run: Run,
    *,
    p99_ms: Annotated[float, Range(0.001)] = 10.0,
    scenarios: list[str] = ["server", "offline"],  # noqa: B006 (read-only)
    duration_s: Annotated[float, Range(0.05)] = 2.0,
    search_steps: Annotated[int, Range(1, 20)] = 6,
    max_batch: Annotated[int, Range(1, 1024)] = 8,
    batch_wait_ms: Annotated[float, Range(0.0)] = 1.0,
    targets: list[str] = [],  # noqa: B006 (read-only)
    qps: Annotated[float, Range(0.0)] = 0.0,
    point: str = "",
) -> Artifact:
    """[serve]: LoadGen's Offline and Server scenarios on every compiled target (or
    ``targets``), teacher and student; writes RUN/serve.

    ``p99_ms``: the Server scenario's latency bound; ``duration_s``: each LoadGen run's minimum
    (MLPerf's submissions use 600 s); ``search_steps``: Server runs in the bisection;
    ``max_batch``/``batch_wait_ms``: dynamic batching, tried beside none; ``qps``: a goal, for
    "servers needed"; ``point``: one request's shape (default: the benchmark's first, batch 1).
    """
    opts = stage_options(serve, locals())
    check_scenarios(scenarios)
    lg = loadgen()
    compiled, bench, exported = run.open("compile"), run.open("benchmark"), run.open("export")
    modality = run.modality
    inputs, _ = load_sample(exported.file("io_sample.npz"))
    sample = for_model(inputs, [i["name"] for i in exported.checks["student"]["inputs"]])
    dims = _request_point(point, modality.points(bench.parameters))
    timing = modality.timing_inputs(sample)
    at = lambda k: timing(format_point({**dims, "batch": k}))  # noqa: E731
    names = _targets(compiled.checks["targets"], targets)
    with Artifact.create(run.folder("serve"), "serve", opts, [compiled, bench]) as w:
        checks: ServeChecks = {
            "method": METHOD, "environment": fingerprint(), "p99_ms": p99_ms, "qps": qps,
            "point": format_point(dims), "cores": available_cpus(), "targets": {},
        }  # fmt: skip
        for name in names:
            entry = compiled.checks["targets"][name]
            target = Target.from_dict(entry["profile"])
            module = backend(target.backend, target.name)
            result = {}
            for m in MODELS:
                if entry[m]["shipped"]:
                    path = compiled.path / name / entry[m]["file"]
                    out = w.path / "loadgen" / name / m
                    result[m] = _serve_model(lg, module, path, target, at, opts, out, run.progress)
            result |= _ratios(result, bench.checks["targets"].get(name, {}), checks["point"])
            checks["targets"][name] = result
        _refuse_unmet(checks)
        w.checks.update(checks)
        capacity_chart(checks, w.path / "capacity.png")
    return w.artifact


def _targets(compiled: dict, wanted: list[str]) -> list[str]:
    shipped = [n for n, t in compiled.items() if any(t[m]["shipped"] for m in MODELS)]
    unknown = [t for t in wanted if t not in shipped]
    if unknown:
        raise KdxError(
            f"serve.targets: {', '.join(unknown)} not compiled in this run; "
            f"its targets: {', '.join(shipped)}"
        )
    return [n for n in shipped if not wanted or n in wanted]


def _ratios(result: dict, bench: dict, point: str) -> dict:
    """Student over teacher: requests served at the bound, Offline throughput; beside the
    single-stream speed-up the benchmark stage measured at the request's point."""
    if not all(m in result for m in MODELS):
        return {}
    t, s = result["teacher"], result["student"]
    out = {"offline_ratio": s["offline_sps"] / t["offline_sps"]}
    if "qps_at_p99" in t:
        out["capacity_ratio"] = s["qps_at_p99"] / t["qps_at_p99"] if t["qps_at_p99"] else None
    out["single_stream_speedup"] = bench.get("speedup", {}).get(point)
    return out


def _refuse_unmet(checks: ServeChecks) -> None:
    """A bound no model meets on any target is bad input: one line with the lowest p99."""
    served = [m for t in checks["targets"].values() for k, m in t.items() if k in MODELS]
    if any("qps_at_p99" in m for m in served) and not any(m.get("qps_at_p99") for m in served):
        lowest = min(s["lowest_p99_ms"] for m in served for s in m["settings"])
        raise KdxError(
            f"serve.p99_ms {checks['p99_ms']:g}: no model on any target meets it at any rate "
            f"(the lowest p99 measured: {lowest:.3g} ms); give a bound above that"
        )
