"""Cloud capacity (issue 24): ``kdexport serve-bench`` drives the compiled models with MLCommons'
LoadGen (MLPerf's Server and Offline scenarios) and writes RUN/serve; the report's Capacity
section; bad input."""

import json
import math
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import fails, kdx

from kdexport.bundle import runner

pytest.importorskip("mlperf_loadgen")
QUICK = ["--duration-s", "0.1", "--set", "serve.search_steps=2", "--max-batch", "2"]


@pytest.mark.backends
def test_serve_bench_finds_the_rate_at_the_bound_with_loadgen(run_copy):
    result = kdx("serve-bench", run_copy, *QUICK, "--p99-ms", "1000", "--target", "ort-cpu",
                 "--qps", "1000000", "--json")  # fmt: skip
    checks = json.loads(result.stdout.strip().splitlines()[-1])
    t = checks["targets"]["ort-cpu"]
    assert list(checks["targets"]) == ["ort-cpu"] and checks["p99_ms"] == 1000
    for m in ("teacher", "student"):
        f = t[m]
        # A bound of a second: every rate up to the Offline throughput meets it.
        assert f["valid"] and f["qps_at_p99"] > 0 and f["p99_ms"] < 1000 and f["offline_sps"] > 0
        assert f["servers_for_qps"] == math.ceil(1e6 / f["qps_at_p99"])
        assert len(f["settings"]) == 2 * 2  # 1 and 2 callers of the session, batching off and on
        assert {s["max_batch"] for s in f["settings"]} == {1, 2}
        best = max(f["settings"], key=lambda s: s["qps_at_p99"])
        assert f["setting"] == best["setting"] and f["qps_at_p99"] == best["qps_at_p99"]
        summary = run_copy / "serve" / best["logs"] / "server" / "mlperf_log_summary.txt"
        assert "Result is : VALID" in summary.read_text()
        assert (
            "Scenario : Offline" in (summary.parent.parent / "offline" / summary.name).read_text()
        )
    assert t["capacity_ratio"] == pytest.approx(
        t["student"]["qps_at_p99"] / t["teacher"]["qps_at_p99"]
    )
    assert (run_copy / "serve" / "capacity.png").stat().st_size > 0
    report = (run_copy / "report.md").read_text()
    assert "## Capacity" in report and "serve/capacity.png" in report
    assert "Servers like this one for 1,000,000 req/s" in report
    _plan_for_a_capacity_goal(run_copy, t)


def _plan_for_a_capacity_goal(run, t):
    """``kdexport plan`` with ``qps``/``p99_ms`` for this machine: within one server the most
    accurate variant that serves the goal; on two servers the one needing the fewest; a goal
    no variant reaches is one line; a bound serve-bench did not measure at is unmeasured."""
    budgets = run / "budgets.toml"
    acc = json.loads((run / "compile" / "manifest.json").read_text())["checks"]["targets"]
    acc = {m: acc["ort-cpu"][m]["accuracy"] for m in ("teacher", "student")}
    rates = {m: t[m]["qps_at_p99"] for m in ("teacher", "student")}
    low = min(rates.values()) / 2
    budgets.write_text(f"[local]\nqps = {low}\np99_ms = 1000\n")
    chosen = json.loads(kdx("plan", run, "--budgets", budgets, "--json").stdout.splitlines()[-1])
    choice = chosen["devices"]["local"]["choice"]
    best = max(acc, key=lambda m: (acc[m], rates[m]))  # fmt: skip
    assert choice["servers"] == 1 and choice["accuracy"] == acc[best]
    assert "req/s at p99 <= 1000 ms" in (run / "plan" / "plan.md").read_text()
    bundle = run.parent / "planned-bundle"  # the plan packaged: the device names its goal
    kdx("package", run, "--plan", run / "plan" / "plan.json", "--dir", bundle)
    fast = ["--batch-sizes", "1", "--min-iters", "3", "--min-time-s", "0", "--rounds", "1"]
    cmd = [sys.executable, bundle / "run.py", "bench", "--device", "local", *fast]
    said = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "req/s at p99 <= 1000 ms)" in said and "the budget" not in said
    goal = max(rates.values()) * 1.5  # two servers of the faster, more of the slower
    budgets.write_text(f"[local]\nqps = {goal}\np99_ms = 1000\nmax_servers = 4\n")
    chosen = json.loads(kdx("plan", run, "--budgets", budgets, "--json").stdout.splitlines()[-1])
    fewest = min(math.ceil(goal / r) for r in rates.values())
    assert chosen["devices"]["local"]["choice"]["servers"] == fewest
    budgets.write_text(f"[local]\nqps = {goal}\np99_ms = 1000\n")
    fails("plan", run, "--budgets", budgets, message="above what any variant reaches")
    budgets.write_text(f"[local]\nqps = {low}\np99_ms = 50\n")
    chosen = json.loads(kdx("plan", run, "--budgets", budgets, "--json").stdout.splitlines()[-1])
    d = chosen["devices"]["local"]
    assert d["choice"] is None and "--p99-ms 50" in d["unmeasured"][0]["command"]


@pytest.mark.backends
def test_openvino_is_served_with_its_throughput_hint(run_copy):
    pytest.importorskip("openvino")
    result = kdx("serve-bench", run_copy, *QUICK, "--target", "openvino-cpu",
                 "--scenario", "offline", "--json")  # fmt: skip
    f = json.loads(result.stdout.strip().splitlines()[-1])["targets"]["openvino-cpu"]["student"]
    assert f["offline_sps"] > 0 and "qps_at_p99" not in f  # offline only: no Server search
    hinted = f["settings"][0]
    assert hinted["options"]["performance_hint"] == "THROUGHPUT" and hinted["workers"] >= 1


@pytest.mark.backends
def test_a_bound_no_rate_meets_is_one_line_and_writes_nothing(run_copy):
    r = fails("serve-bench", run_copy, *QUICK, "--p99-ms", "0.001", "--target", "ort-cpu",
              message="no model on any target meets it")  # fmt: skip
    assert "the lowest p99 measured" in r.stderr
    assert not (run_copy / "serve").exists()


def test_bad_scenario_target_and_missing_loadgen_are_one_line(run_copy, monkeypatch):
    fails("serve-bench", run_copy, "--scenario", "batch", message="give one or more of server")
    fails("serve-bench", run_copy, "--target", "ort-cuda", message="not compiled in this run")
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # as if not installed
    fails("serve-bench", run_copy, message="pip install 'kdexport[serve]'")
    assert not (run_copy / "serve").exists()


def test_the_bisection_keeps_the_highest_valid_rate(monkeypatch, tmp_path):
    """Valid up to 700 requests/s below a ceiling of 1000: six halvings end within 1000/64."""

    def run(lg, workers, scenario, qps, opts, out):
        out.mkdir(parents=True)
        ok = qps <= 700
        return {"validity": "VALID" if ok else "INVALID", "scheduled_samples_per_sec": qps,
                **{f"{p}.00_percentile_latency_ns": (5e6 if ok else 2e7) for p in (50, 90, 99)}}  # fmt: skip

    monkeypatch.setattr(runner, "loadgen_run", run)
    found = runner.peak_rate(None, None, 1000.0, {"search_steps": 6}, tmp_path / "server")
    assert 700 - 1000 / 64 <= found["qps_at_p99"] <= 700 and found["valid"]
    # a rate is rejected after a second failing run
    assert [t["valid"] for t in found["trials"]] == [True, False, False, True, True] + [False] * 4
    assert (tmp_path / "server").is_dir() and len(list(tmp_path.iterdir())) == 1


def test_one_run_that_misses_the_bound_by_chance_does_not_lower_the_rate():
    """The first run at 750 fails as a stall would make it; its second run passes, and the
    search climbs on as it would without the stall."""
    runs = []

    def trial(qps):
        runs.append(qps)
        return qps <= 900 and runs.count(qps) + (qps != 750) > 1

    found = runner.highest_rate(trial, 1000.0, 6)
    assert 900 - 1000 / 64 <= found <= 900
    assert runs[:3] == [500, 750, 750]
    assert runner.highest_rate(lambda _: False, 1000.0, 3) is None


def test_queued_requests_are_joined_up_to_the_batch_size():
    done, sizes = [], []
    lg = SimpleNamespace(
        QuerySampleResponse=lambda i, *_: i, QuerySamplesComplete=lambda r: done.extend(r)
    )
    gate = threading.Event()

    def run(x):
        gate.wait()
        sizes.append(x)

    workers = runner.ServeWorkers(lg, [run], {k: k for k in range(1, 5)}, 4, wait_s=0.05)
    workers.issue([SimpleNamespace(id=i) for i in range(1)])
    time.sleep(0.1)  # the first request waits alone in the worker
    workers.issue([SimpleNamespace(id=i) for i in range(1, 7)])  # queued meanwhile
    gate.set()
    workers.close()
    assert sorted(done) == list(range(7)) and sizes == [1, 4, 2]


def test_a_burst_fills_batches_at_once_across_the_workers():
    """Full batches are taken without waiting for more, by both workers."""
    done, sizes = [], []
    lg = SimpleNamespace(
        QuerySampleResponse=lambda i, *_: i, QuerySamplesComplete=lambda r: done.extend(r)
    )
    workers = runner.ServeWorkers(lg, [sizes.append] * 2, {k: k for k in range(1, 9)}, 8, 30.0)
    began = time.perf_counter()
    workers.issue([SimpleNamespace(id=i) for i in range(16)])
    while len(done) < 16 and time.perf_counter() - began < 5:  # not the 30 s a batch may wait
        time.sleep(0.001)
    assert sorted(done) == list(range(16)) and sizes == [8, 8]
    workers.close()


def _closed_loop_answered(clients: int, seconds: float) -> int:
    """Requests still unanswered 5 s after a closed loop of ``clients`` through two batching
    workers ended (each answered request sent again until ``seconds`` have passed)."""
    lock, done, state = threading.Lock(), threading.Event(), {"open": clients}
    stop = time.perf_counter() + seconds

    def complete(ids):
        now = time.perf_counter()
        with lock:
            for _ in ids:
                if now < stop:
                    workers.issue([SimpleNamespace(id=0)])
                else:
                    state["open"] -= 1
            if state["open"] == 0:
                done.set()

    lg = SimpleNamespace(QuerySampleResponse=lambda i, *_: i, QuerySamplesComplete=complete)
    workers = runner.ServeWorkers(lg, [lambda _: None] * 2, dict.fromkeys(range(1, 9)), 8, 0.001)
    with lock:
        workers.issue([SimpleNamespace(id=0) for _ in range(clients)])
    left = 0 if done.wait(5) else state["open"]
    workers.close()  # (wakes a worker that slept past the queue: answered only now)
    return left


def test_every_request_is_answered_when_batching_workers_wait_together():
    """CPython 3.11's SimpleQueue lost requests here: a worker's timed get slept past items
    that another worker's wake-up left in the queue, and the run never ended."""
    for _ in range(100):
        assert _closed_loop_answered(8, 0.02) == 0
