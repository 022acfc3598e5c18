"""The ``serve`` verb: how many requests a second each compiled model serves, measured as MLPerf
Inference measures it (``kdexport serve-bench RUN``).

MLCommons' LoadGen drives every compiled target's teacher and student in this process. Its
Offline scenario queues every sample at once (samples per second); its Server scenario sends
queries as a Poisson process at a rate, and calls the rate VALID when the 99th percentile of
latency (queueing included) stays under the bound. The highest VALID rate is found by
bisection below the Offline throughput, each trial a LoadGen run of its own; a rate is
rejected only when a second run at it misses the bound too (a shared machine's stall fails one
run in several by chance, and a bisection never climbs back above a rate it rejected).

Each backend says how it serves many requests at once (``throughput_settings``: callers of one
ONNX Runtime session with the CPUs' threads divided among them; OpenVINO's THROUGHPUT hint,
its streams and one asynchronous infer request each); each is tried without and with dynamic
batching (a worker joins up to ``max_batch`` queued requests, by default those already queued,
or waiting up to ``batch_wait_ms`` for more), and the setting that serves the most at the bound
is the model's figure. RUN/serve holds the figures (manifest checks), LoadGen's summary and
detail logs of each setting's Offline run and of its Server run at the rate found, and
capacity.png. The serving engine is the bundle runner's (``kdexport.bundle.runner``): ``run.py
bench --scenario server`` runs it on a device.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Annotated, NotRequired, TypedDict

from kdexport.artifact import Artifact
from kdexport.backends import Throughput, backend
from kdexport.backends.profiles import Target
from kdexport.bundle.runner import (
    SERVE_METHOD,
    SERVE_SCENARIOS,
    batched,
    capacity_ratios,
    format_point,
    import_loadgen,
    model_capacity,
    parse_point,
    serve_setting,
)
from kdexport.chart import capacity_chart
from kdexport.compile import CompileChecks, shipped_targets
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.feeds import for_model, load_sample
from kdexport.options import Range, stage_options
from kdexport.rundir import MODELS
from kdexport.timing import available_cpus, fingerprint

LOADGEN_INSTALL = "pip install 'kdexport[serve]' (MLCommons' mlcommons-loadgen)"


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


def loadgen() -> ModuleType:
    """LoadGen's module, or one line naming the extra."""
    lg = import_loadgen()
    if lg is None:
        raise KdxError(f"serve-bench needs LoadGen (no module mlperf_loadgen): {LOADGEN_INSTALL}")
    return lg


def check_scenarios(scenarios: list[str]) -> None:
    bad = [s for s in scenarios if s not in SERVE_SCENARIOS]
    if bad or not scenarios:
        raise KdxError(
            f"serve scenario {', '.join(map(repr, bad)) or '(none)'}: give one or more of "
            f"{', '.join(SERVE_SCENARIOS)}"
        )


def _serve_setting(lg, module, path, target, way: Throughput, batch, at, opts, out) -> dict:
    """One model served one way (``way``, dynamic batching up to ``batch``)."""
    runner = module.load(path, replace(target, options={**target.options, **way.options}))
    feeds = {k: at(k) for k in range(1, batch + 1)}
    try:
        result = serve_setting(lg, runner.workers(way.workers), feeds, batch, opts, out)
    except module.RUNTIME_ERRORS as e:
        raise KdxError(
            f"target '{target.name}': {module.RUNTIME} cannot serve {path.name} in batches of up "
            f"to {batch} (serve.max_batch needs a free batch axis): {module.explain(e)}"
        ) from None
    return {"setting": batched(way.label, batch), "options": way.options, **result}


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
    return model_capacity(settings, opts)


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
    batch_wait_ms: Annotated[float, Range(0.0)] = 0.0,
    targets: list[str] = [],  # noqa: B006 (read-only)
    qps: Annotated[float, Range(0.0)] = 0.0,
    point: str = "",
) -> Artifact:
    """[serve]: LoadGen's Offline and Server scenarios on every compiled target (or
    ``targets``), teacher and student; writes RUN/serve.

    ``p99_ms``: the Server scenario's latency bound; ``duration_s``: each LoadGen run's minimum
    (MLPerf's submissions use 600 s); ``search_steps``: bisection steps (a rejected rate takes
    two runs); ``max_batch``/``batch_wait_ms``: dynamic batching (what is queued, or what
    arrives within the wait), tried beside none; ``qps``: a goal, for
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
    names = _targets(compiled.checks, targets)
    with Artifact.create(run.folder("serve"), "serve", opts, [compiled, bench]) as w:
        checks: ServeChecks = {
            "method": SERVE_METHOD, "environment": fingerprint(), "p99_ms": p99_ms, "qps": qps,
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
            speedup = bench.checks["targets"].get(name, {}).get("speedup", {})
            result |= capacity_ratios(result, speedup.get(checks["point"]))
            checks["targets"][name] = result
        _refuse_unmet(checks)
        w.checks.update(checks)
        capacity_chart(checks, w.path / "capacity.png")
    return w.artifact


def _targets(compiled: CompileChecks, wanted: list[str]) -> list[str]:
    shipped = shipped_targets(compiled)
    unknown = [t for t in wanted if t not in shipped]
    if unknown:
        raise KdxError(
            f"serve.targets: {', '.join(unknown)} not compiled in this run; "
            f"its targets: {', '.join(shipped)}"
        )
    return [n for n in shipped if not wanted or n in wanted]


def _refuse_unmet(checks: ServeChecks) -> None:
    """A bound no model meets on any target is bad input: one line with the lowest p99."""
    served = [m for t in checks["targets"].values() for k, m in t.items() if k in MODELS]
    if any("qps_at_p99" in m for m in served) and not any(m.get("qps_at_p99") for m in served):
        lowest = min(s["lowest_p99_ms"] for m in served for s in m["settings"])
        raise KdxError(
            f"serve.p99_ms {checks['p99_ms']:g}: no model on any target meets it at any rate "
            f"(the lowest p99 measured: {lowest:.3g} ms); give a bound above that"
        )
