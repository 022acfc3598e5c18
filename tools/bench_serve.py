"""Cloud capacity measured (issue 24): ``kdexport serve-bench`` on the digits recipe, and
drivers of our own that cross-check LoadGen's figure.

1. ``kdexport distill-and-export --recipe digits`` (ort-cpu and openvino-cpu, fp32), unless
   ``--run`` names a complete run.
2. ``kdexport serve-bench RUN --p99-ms B``: per target, teacher and student, LoadGen's Server
   rate at the bound and its Offline throughput, the capacity ratio beside the single-stream
   speed-up of the run's benchmark stage.
3. The cross-check, on ort-cpu's teacher and student, each with the setting serve-bench found
   best, through the same serving workers, ROUNDS rounds side by side (this machine's speed
   drifts over minutes): LoadGen as serve-bench drives it; a closed loop of ours (users,
   USERS_PER_BOUND for each request that arrives within the bound at the offered rate, each
   thinking an exponential time, sending one request and thinking again once answered: the
   interactive closed model), its figure the highest throughput whose p99 meets the bound,
   bisecting the users' offered rate as serve-bench bisects LoadGen's (the goal: within 15% of
   LoadGen's); an open loop of ours (Poisson arrivals as LoadGen's Server scenario, timed from
   their scheduled arrival, without LoadGen); and clients that never think (C = 1, 2, 4, ...),
   which measure throughput at a concurrency, not a rate at a bound: near the Offline
   throughput, as no burst ever queues. Then each driver's p99 at LoadGen's rate and 1.25 times
   it, and the harness's ceiling: the drivers around the same workers with an inference that
   takes no time. The issue's two keys are the teacher's; the goal checks both models.

    .venv/bin/python tools/bench_serve.py [--run RUN] [--p99-ms 2] [--out DIR]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's kdexport

from kdexport.backends import backend
from kdexport.backends.profiles import Target
from kdexport.bundle.runner import (
    ServeWorkers,
    batch_wait_s,
    format_point,
    highest_rate,
    import_loadgen,
    loadgen_run,
    offline_rate,
    parse_point,
    peak_rate,
    serve_setting,
)
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.feeds import for_model, load_sample
from kdexport.rundir import open_stage

TARGETS = ["ort-cpu", "openvino-cpu"]
CHECK = "ort-cpu"
ROUNDS = 5
USERS_PER_BOUND = 8  # the closed loop's users per request that arrives within the bound


def kdx(*args) -> None:
    cmd = [sys.executable, "-m", "kdexport.cli", *map(str, args)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class _Saturation:
    """C clients without threads of their own and without think time: what the serving workers
    call as LoadGen. Each answered request is timed and its client sends the next at once, until
    the deadline."""

    def __init__(self, clients: int, deadline: float, workers=None):
        self.deadline, self.workers, self.lock = deadline, workers, threading.Lock()
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self.open, self.done = clients, threading.Event()
        self.ids = iter(range(1 << 62))

    @staticmethod
    def QuerySampleResponse(i, *_):  # noqa: N802 (LoadGen's name)
        return i

    def send(self) -> None:
        i = next(self.ids)
        self.sent[i] = time.perf_counter()
        self.workers.issue([SimpleNamespace(id=i)])

    def QuerySamplesComplete(self, ids):  # noqa: N802
        now = time.perf_counter()
        with self.lock:
            for i in ids:
                self.latencies.append(now - self.sent.pop(i))
                if now < self.deadline:
                    self.send()
                else:
                    self.open -= 1
            if self.open == 0:
                self.done.set()


class _TimedFromDue:
    """What the serving workers call as LoadGen: each answer timed from its request's due time
    (``due``, under ``lock``); ``answered`` is what the driver does next."""

    def __init__(self):
        self.lock = threading.Lock()
        self.due: dict[int, float] = {}
        self.latencies: list[float] = []

    @staticmethod
    def QuerySampleResponse(i, *_):  # noqa: N802 (LoadGen's name)
        return i

    def QuerySamplesComplete(self, ids):  # noqa: N802
        now = time.perf_counter()
        with self.lock:
            for i in ids:
                self.latencies.append(now - self.due.pop(i))
                self.answered(now)

    def answered(self, now: float) -> None:
        pass


class _Users(_TimedFromDue):
    """A closed population of ``users``: each thinks for an exponential time of mean
    ``think_s``, sends one request, and thinks again once it is answered (the interactive
    closed model). Requests are issued from the driving thread when their user's think ends and
    timed from that moment; never more than ``users`` are in the system at once."""

    def __init__(self, users: int, think_s: float, start: float, duration_s: float):
        super().__init__()
        count = users + 2 * int(users / think_s * duration_s) + 1024  # twice what can be sent
        thinks = np.random.default_rng(0).exponential(think_s, count)
        self.thinks = iter(thinks.tolist())  # drawn up front: an answer only pushes a float
        self.wakes = sorted(start + t for t in itertools.islice(self.thinks, users))  # a heap

    def answered(self, now: float) -> None:
        heapq.heappush(self.wakes, now + next(self.thinks))


def users_p99(runs: list, feeds: dict, wait_s: float, users: int, qps: float, duration_s: float):
    """``users`` thinking ``users / qps`` seconds on average, for ``duration_s``, through the
    serving workers: the throughput they got (answers per second) and its p99 latency in ms.
    The driving thread sleeps until the next think ends (an answer starts a think of its own,
    almost always ending after those already running)."""
    start = time.perf_counter()
    loop = _Users(users, users / qps, start, duration_s)
    workers = ServeWorkers(loop, runs, feeds, max(feeds), wait_s)
    ids = itertools.count()
    try:
        while (now := time.perf_counter()) < start + duration_s:
            woken = []
            with loop.lock:
                while loop.wakes and loop.wakes[0] <= now:
                    i = next(ids)
                    loop.due[i] = heapq.heappop(loop.wakes)
                    woken.append(SimpleNamespace(id=i))
                next_wake = loop.wakes[0] if loop.wakes else now + 1e-3
            if woken:
                workers.issue(woken)
            else:
                time.sleep(min(next_wake - now, 1e-3))
    finally:
        workers.close()  # the workers answer every request in flight first
    elapsed = time.perf_counter() - start
    return len(loop.latencies) / elapsed, float(np.percentile(loop.latencies, 99)) * 1000


def population(qps: float, opts: dict) -> int:
    """The closed loop's users at an offered rate: USERS_PER_BOUND for every request that
    arrives within the bound. Fewer, and a burst the bound allows finds every user waiting: the
    loop throttles itself, its p99 stays low, and it reports a rate no open arrival process
    gets through (256 users read 1.48x LoadGen's rate on the digits student at 100,000 req/s)."""
    return max(USERS_PER_BOUND, math.ceil(USERS_PER_BOUND * qps * opts["p99_ms"] / 1000))


def users_loop(runs: list, feeds: dict, wait_s: float, ceiling: float, opts: dict) -> dict:
    """The highest throughput of thinking users (``population``) whose p99 meets the bound,
    searching their offered rate (users / mean think time) in (0, ceiling] as serve-bench
    searches LoadGen's (``highest_rate``); every trial's figures."""
    trials = []

    def trial(offered: float) -> bool:
        users = population(offered, opts)
        qps, p99 = users_p99(runs, feeds, wait_s, users, offered, opts["duration_s"])
        passed = p99 <= opts["p99_ms"]
        trials.append({"offered_qps": offered, "users": users, "qps": qps, "p99_ms": p99,
                       "passed": passed})  # fmt: skip
        return passed

    best = highest_rate(trial, ceiling, opts["search_steps"])
    at_best = [t["qps"] for t in trials if t["offered_qps"] == best and t["passed"]]
    return {"qps": at_best[0] if at_best else 0.0, "trials": trials}


class _OpenLoop(_TimedFromDue):
    """Poisson arrivals issued from this thread, every arrival already due at once, each timed
    from its scheduled arrival: LoadGen's Server scenario without LoadGen."""


def open_loop_p99(runs: list, feeds: dict, wait_s: float, qps: float, duration_s: float) -> float:
    """The p99 latency in ms of Poisson arrivals at ``qps`` for ``duration_s`` (1,024 at least,
    as LoadGen's minimum) through the serving workers."""
    arrivals = np.cumsum(
        np.random.default_rng(0).exponential(1 / qps, max(1024, int(qps * duration_s)))
    )
    loop = _OpenLoop()
    workers = ServeWorkers(loop, runs, feeds, max(feeds), wait_s)
    start, sent = time.perf_counter(), 0
    try:
        while sent < len(arrivals):
            now = time.perf_counter() - start
            due = int(np.searchsorted(arrivals, now, side="right"))
            if due == sent:
                time.sleep(min(arrivals[sent] - now, 1e-3))
                continue
            with loop.lock:
                loop.due.update((i, start + arrivals[i]) for i in range(sent, due))
            workers.issue([SimpleNamespace(id=i) for i in range(sent, due)])
            sent = due
    finally:
        workers.close()  # the workers answer every queued request first
    return float(np.percentile(loop.latencies, 99)) * 1000


def open_loop(runs: list, feeds: dict, wait_s: float, ceiling: float, opts: dict) -> float:
    """The highest Poisson rate whose p99 meets the bound, searching (0, ceiling] as
    serve-bench searches LoadGen's rate (``highest_rate``; the ceiling: the setting's Offline
    throughput)."""

    def trial(qps: float) -> bool:
        return open_loop_p99(runs, feeds, wait_s, qps, opts["duration_s"]) <= opts["p99_ms"]

    return highest_rate(trial, ceiling, opts["search_steps"]) or 0.0


def serving(run_dir: Path, target: str, model: str, setting: dict) -> tuple[list, dict]:
    """A compiled model's serving callers and its requests by batch size, as serve-bench's
    ``setting`` served it."""
    compiled = open_stage(run_dir, "compile")
    entry = compiled.checks["targets"][target]
    profile = Target.from_dict(entry["profile"])
    module = backend(profile.backend, target)
    path = compiled.path / target / entry[model]["file"]
    runner = module.load(path, replace(profile, options={**profile.options, **setting["options"]}))
    run = Run(run_dir)
    exported, bench = open_stage(run_dir, "export"), open_stage(run_dir, "benchmark")
    inputs, _ = load_sample(exported.file("io_sample.npz"))
    sample = for_model(inputs, [i["name"] for i in exported.checks["student"]["inputs"]])
    timing = run.modality.timing_inputs(sample)
    dims = {**parse_point(run.modality.points(bench.parameters)[0]), "batch": 1}
    feeds = {
        k: timing(format_point({**dims, "batch": k})) for k in range(1, setting["max_batch"] + 1)
    }
    return runner.workers(setting["workers"]), feeds


def saturation(runs: list, feeds: dict, wait_s: float, p99_ms: float, duration_s: float):
    """Throughput and p99 of C clients that never think, through the serving workers, C doubling
    until the p99 passes the bound; the highest throughput within it, and every C's figures."""
    rows, best, clients = [], None, 1
    while clients <= 1024:
        began = time.perf_counter()
        loop = _Saturation(clients, began + duration_s)
        loop.workers = ServeWorkers(loop, runs, feeds, max(feeds), wait_s)
        try:
            with loop.lock:
                for _ in range(clients):
                    loop.send()
            loop.done.wait()
        finally:
            loop.workers.close()
        qps = len(loop.latencies) / (time.perf_counter() - began)
        p99 = float(np.percentile(loop.latencies, 99)) * 1000
        rows.append({"clients": clients, "qps": qps, "p99_ms": p99})
        if p99 > p99_ms:
            break
        best = qps if best is None else max(best, qps)
        clients *= 2
    return best or 0.0, rows


def harness_ceiling(workers: int, max_batch: int, wait_s: float, opts: dict, out: Path) -> dict:
    """Both drivers around serving workers whose inference takes no time: the most each can
    drive on this machine (LoadGen calls into Python for every burst and answer)."""
    lg = import_loadgen()
    runs, feeds = [lambda _: None] * workers, dict.fromkeys(range(1, max_batch + 1))
    served = ServeWorkers(lg, runs, feeds, max_batch, wait_s)
    try:
        off = offline_rate(lg, served, 100_000, opts, out / "offline")
        peak = peak_rate(lg, served, off["samples_per_second"], opts, out / "server")
    finally:
        served.close()
    ceiling = off["samples_per_second"]
    return {"workers": workers, "max_batch": max_batch, "loadgen_offline_sps": ceiling,
            "loadgen_qps": peak["qps_at_p99"],
            "closed_loop_qps": users_loop(runs, feeds, wait_s, ceiling, opts)["qps"],
            "saturation_qps": saturation(runs, feeds, wait_s, opts["p99_ms"], opts["duration_s"])[0],
            "open_loop_qps": open_loop(runs, feeds, wait_s, ceiling, opts)}  # fmt: skip


def p99_at_rate(runs, feeds, max_batch, qps, opts, out) -> dict:
    """The p99 in ms of each driver at one offered rate: where the rates at the bound differ,
    whether the drivers see different latencies or the same latency through noise."""
    wait, lg = batch_wait_s(opts, max_batch), import_loadgen()
    workers = ServeWorkers(lg, runs, feeds, max_batch, wait)
    try:
        by_loadgen = loadgen_run(lg, workers, "server", qps, opts, out)
    finally:
        workers.close()
    users = population(qps, opts)
    closed_qps, closed_p99 = users_p99(runs, feeds, wait, users, qps, opts["duration_s"])
    return {"offered_qps": qps,
            "loadgen": by_loadgen["99.00_percentile_latency_ns"] / 1e6,
            "closed_loop": closed_p99, "closed_loop_qps": closed_qps,
            "open_loop": open_loop_p99(runs, feeds, wait, qps, opts["duration_s"])}  # fmt: skip


def crosscheck(run: Path, model: str, opts: dict, out: Path) -> dict:
    """``model`` on CHECK with the setting serve-bench found best, served by LoadGen (as
    serve-bench serves it), the closed loop, the saturation clients and the open loop in turn,
    ROUNDS times, below the round's LoadGen Offline throughput: side by side, as this machine's
    speed drifts over minutes, each round starting with the next driver; then each driver's p99
    at LoadGen's rate and 1.25 times it; the medians, and every round."""
    f = open_stage(run, "serve").checks["targets"][CHECK][model]
    setting = next(s for s in f["settings"] if s["setting"] == f["setting"])
    wait = batch_wait_s(opts, setting["max_batch"])
    runs, feeds = serving(run, CHECK, model, setting)
    lg, max_batch = import_loadgen(), setting["max_batch"]

    def by_loadgen(ceiling: float, at: Path) -> dict:  # serve_setting's Server search
        workers = ServeWorkers(lg, runs, feeds, max_batch, wait)
        try:
            return peak_rate(lg, workers, ceiling, opts, at)
        finally:
            workers.close()

    offline_only = {**opts, "scenarios": ["offline"]}
    drivers = {  # each searches below a ceiling, LoadGen's logs kept in a folder
        "loadgen": by_loadgen,
        "closed_loop": lambda ceiling, _: users_loop(runs, feeds, wait, ceiling, opts),
        "saturation": lambda *_: saturation(runs, feeds, wait, opts["p99_ms"], opts["duration_s"]),
        "open_loop": lambda ceiling, _: open_loop(runs, feeds, wait, ceiling, opts),
    }  # fmt: skip
    names = list(drivers)
    rounds = []
    for i in range(ROUNDS):
        ceiling = serve_setting(lg, runs, feeds, max_batch, offline_only, out / f"round{i}")[
            "offline_sps"
        ]
        order = names[i % len(names) :] + names[: i % len(names)]  # each round starts anew
        got = {name: drivers[name](ceiling, out / f"round{i}" / "server") for name in order}
        rounds.append({
            "order": order,
            "loadgen_qps": got["loadgen"]["qps_at_p99"],
            "loadgen_offline_sps": ceiling,
            "closed_loop_qps": got["closed_loop"]["qps"],
            "closed_loop_trials": got["closed_loop"]["trials"],
            "saturation_qps": got["saturation"][0],
            "saturation_rows": got["saturation"][1],
            "open_loop_qps": got["open_loop"],
        })  # fmt: skip
    lg_rate = float(np.median([r["loadgen_qps"] for r in rounds]))
    same_rate = [  # none where no rate met the bound under LoadGen (a rate of 0 never ends)
        p99_at_rate(runs, feeds, max_batch, lg_rate * k, opts, out / f"at{k}")
        for k in ((1.0, 1.25) if lg_rate else ())
    ]
    figures = {
        k: float(np.median([r[k] for r in rounds]))
        for k in ("loadgen_qps", "loadgen_offline_sps", "closed_loop_qps", "saturation_qps",
                  "open_loop_qps")
    }  # fmt: skip
    lg_qps = figures["loadgen_qps"]
    return {
        "setting": setting["setting"],
        "serve_bench_qps": f["qps_at_p99"],
        **figures,
        "ratio": figures["closed_loop_qps"] / lg_qps if lg_qps else None,
        "open_loop_ratio": figures["open_loop_qps"] / lg_qps if lg_qps else None,
        "saturation_ratio": figures["saturation_qps"] / lg_qps if lg_qps else None,
        "p99_at_loadgen_rate": same_rate,
        "rounds": rounds,
        "harness_ceiling": harness_ceiling(
            setting["workers"], setting["max_batch"], wait, opts, out / "ceiling"
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a complete run (default: make a digits run)")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary folder)")
    ap.add_argument("--p99-ms", type=float, default=2.0)
    ap.add_argument("--duration-s", type=float, default=2.0)
    args = ap.parse_args()
    work = (args.out or Path(tempfile.mkdtemp(prefix="bench_serve-"))).resolve()
    run = args.run
    if run is None:
        run = work / "run"
        kdx("distill-and-export", "--out", run, "--set", f"compile.targets={json.dumps(TARGETS)}",
            "--set", "benchmark.batch_sizes=[1, 64]")  # fmt: skip
    try:  # a run's serve figures at the same bound and duration are used as they are
        params = open_stage(run, "serve").parameters
        if (params["p99_ms"], params["duration_s"]) != (args.p99_ms, args.duration_s):
            raise KdxError("another bound")
    except KdxError:
        kdx("serve-bench", run, "--p99-ms", args.p99_ms, "--duration-s", args.duration_s)
    served = open_stage(run, "serve")
    checks = served.checks
    targets = {}
    for name, t in checks["targets"].items():
        targets[name] = {
            m: {k: t[m].get(k) for k in ("qps_at_p99", "offline_sps", "valid", "p99_ms", "setting")}
            for m in ("teacher", "student")
        }
        targets[name] |= {k: t.get(k) for k in ("capacity_ratio", "single_stream_speedup")}
    opts = served.parameters  # the bound, durations, search steps and batching serve-bench used
    check = {"target": CHECK}
    for model in ("teacher", "student"):
        check[model] = crosscheck(run, model, opts, work / "crosscheck" / model)
    # The issue's keys: the teacher's figures (both models' beside them; the goal checks both).
    check |= {k: check["teacher"][k] for k in ("loadgen_qps", "closed_loop_qps")}
    figures = {
        "p99_ms": args.p99_ms,
        "cores": checks["cores"],
        "targets": targets,
        "crosscheck": check,
        "goals": {
            "capacity_ratio_at_least_single_stream_speedup": (targets[CHECK]["capacity_ratio"] or 0)
            >= (targets[CHECK]["single_stream_speedup"] or float("inf")),
            "every_result_valid": all(
                t[m]["valid"] for t in targets.values() for m in ("teacher", "student")
            ),
            "crosscheck_within_15_percent": {
                m: abs((check[m]["ratio"] or 0) - 1) <= 0.15 for m in ("teacher", "student")
            },
        },
        "run": str(run),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
