"""Latency on a busy machine: per-round ratios, the noise monitor, CPU pinning, thread settings,
and `compare`'s within/beyond-spread verdict (issue 16). No timing asserts."""

import json
import os

import pytest
from conftest import fails, kdx

from kdexport.bundle.runner import BUSY_SHARE
from kdexport.compare import compare_runs, p50_interval, verdict
from kdexport.timing import (
    available_cpus,
    noise_between,
    noise_summary,
    paired,
    parse_cpus,
    read_noise,
    round_spread,
    unstable_reasons,
)


def test_paired_is_the_median_of_per_round_ratios_with_its_iqr():
    # Per-round medians a: 2, 3.6, 1.8, 2.2, 2.1; b: 2, 3, 2, 2, 2 -> ratios 1, 1.2, .9, 1.1, 1.05
    a = [[1.0, 2.0, 3.0], [3.6], [1.8], [2.0, 2.2, 2.4], [2.1]]
    b = [[2.0], [3.0], [2.0], [2.0], [1.0, 2.0, 3.0]]
    r = paired(a, b)
    assert r["round_ratios"] == pytest.approx([1.0, 1.2, 0.9, 1.1, 1.05])
    assert r["ratio"] == pytest.approx(1.05)  # median of 0.9, 1.0, 1.05, 1.1, 1.2
    assert r["iqr"] == pytest.approx([1.0, 1.1])  # 25th/75th percentile, linear interpolation
    assert r["rel_iqr"] == pytest.approx(0.1 / 1.05) and r["rounds"] == 5


def test_a_burst_of_load_lands_on_both_sides_of_a_round():
    # Round 3 ran twice as slow for both models: the per-round ratio stays 2.
    a, b = [[2.0], [2.0], [4.0], [2.0]], [[1.0], [1.0], [2.0], [1.0]]
    assert paired(a, b)["ratio"] == 2.0 and paired(a, b)["iqr"] == [2.0, 2.0]
    assert round_spread([1.0, 1.0, 2.0, 1.0]) == pytest.approx(0.25)  # IQR 1-1.25 over 1


def _fake_root(tmp_path, name, busy, idle, own, freq_khz, throttles, load="0.50"):
    root = tmp_path / name
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "loadavg").write_text(f"{load} 0.40 0.30 1/100 1234\n")
    # user nice system idle iowait irq softirq steal guest guest_nice
    (root / "proc" / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    own_fields = " ".join(["S"] + ["0"] * 10 + [str(own), "0", "0", "0"] + ["0"] * 5)
    (root / "proc" / "self" / "stat").write_text(f"42 (python x) {own_fields}\n")
    cpu0 = root / "sys" / "devices" / "system" / "cpu" / "cpu0"
    (cpu0 / "cpufreq").mkdir(parents=True)
    (cpu0 / "cpufreq" / "scaling_cur_freq").write_text(f"{freq_khz}\n")
    (cpu0 / "thermal_throttle").mkdir()
    (cpu0 / "thermal_throttle" / "core_throttle_count").write_text(f"{throttles}\n")
    return str(root)


def test_noise_monitor_on_fake_proc(tmp_path):
    a = read_noise(
        _fake_root(tmp_path, "a", busy=1000, idle=9000, own=200, freq_khz=2_000_000, throttles=3)
    )
    b = read_noise(
        _fake_root(
            tmp_path,
            "b",
            busy=1400,
            idle=9600,
            own=300,
            freq_khz=1_500_000,
            throttles=5,
            load="1.75",
        )
    )
    assert (a["busy"], a["total"], a["own"], a["freq_mhz"], a["throttle"]) == (
        1000,
        10000,
        200,
        2000,
        3,
    )
    n = noise_between(a, b)
    # 400 busy jiffies of 1000, 100 of them ours: others used 300 / 1000 of the CPUs' time.
    assert n["others_cpu_share"] == pytest.approx(0.3)
    assert (n["load_avg"], n["freq_mhz"], n["throttle_events"]) == (1.75, 1500, 2)
    s = noise_summary([n, {**n, "others_cpu_share": 0.1, "freq_mhz": 2000}])
    assert s["others_cpu_share_max"] == pytest.approx(0.3) and s["freq_mhz_range"] == [1500, 2000]
    reasons = unstable_reasons(s, spread=0.02)
    assert BUSY_SHARE < 0.3 and len(reasons) == 2  # others' share, throttling
    assert "30% of the CPUs" in reasons[0] and "throttling" in reasons[1]
    assert unstable_reasons({"others_cpu_share_max": 0.05}, spread=0.2)[0].startswith(
        "rounds spread"
    )


def test_noise_monitor_without_proc(tmp_path):
    empty = read_noise(str(tmp_path))
    assert empty["busy"] is None and empty["freq_mhz"] is None
    n = noise_between(empty, empty)
    assert n["others_cpu_share"] is None and unstable_reasons(noise_summary([n]), 0.0) == []
    assert read_noise()["t"] > 0  # the real machine: whatever it offers


def test_cpu_lists():
    assert parse_cpus("0") == {0}
    assert available_cpus() >= 1
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus("a-b")
    with pytest.raises(ValueError, match="does not have"):
        parse_cpus(f"0-{os.cpu_count()}")


def test_bad_benchmark_options(tmp_path):
    fails("benchmark", tmp_path, "--cpus", "4096", message="which this machine does not have")
    fails("benchmark", tmp_path, "--cpus", "x", message="not a CPU list")
    fails("benchmark", tmp_path, "--until-stable", "0", message="--until-stable 0: give a time")
    fails("benchmark", tmp_path, "--until-stable", "-5", message="above 0")
    fails("benchmark", tmp_path, "--threads", "0", message="--threads 0")


def _figs(p50_student, rounds_student, speedup, iqr, threads=2):
    model = {"accuracy": 0.9, "p50_ms": 1.0, "round_medians_ms": [0.98, 1.0, 1.01, 1.02]}
    student = {
        "accuracy": 0.9,
        "p50_ms": p50_student,
        "round_medians_ms": rounds_student,
        "p50_ci95_ms": [p50_student * 0.99, p50_student * 1.01],
    }
    return {
        "targets": {
            "ort-cpu": {
                "teacher": model,
                "student": student,
                "speedup": speedup,
                "speedup_detail": {"ratio": speedup, "iqr": iqr, "unstable": False},
            }
        },
        "environment": {"cpu": "test cpu", "logical_cores": 2},
        "benchmark_settings": {"threads": threads, "cpus": [0, 1], "pinned": False},
    }


def _run(tmp_path, name, figs):
    (tmp_path / name).mkdir()
    (tmp_path / name / "manifest.json").write_text(json.dumps({"figures": figs}))
    return tmp_path / name


def test_verdicts():
    assert verdict([1.0, 1.1], [1.05, 1.2], "up", "down") == "same within spread"
    assert verdict([1.0, 1.1], [1.2, 1.3], "up", "down") == "up"
    assert verdict([1.0, 1.1], [0.8, 0.9], "up", "down") == "down"
    assert verdict(None, [0.8, 0.9], "up", "down") == "-"
    # IQR of the round medians (0.95-1.05 here) widened to the 95% CI (0.9-1.02).
    f = {"p50_ms": 1.0, "round_medians_ms": [0.9, 1.0, 1.0, 1.1], "p50_ci95_ms": [0.9, 1.02]}
    assert p50_interval(f) == pytest.approx([0.9, 1.025])


def test_compare_says_what_differs_beyond_the_spread(tmp_path):
    a = _run(tmp_path, "a", _figs(0.5, [0.49, 0.5, 0.5, 0.51], 2.0, [1.9, 2.1]))
    b = _run(tmp_path, "b", _figs(0.6, [0.59, 0.6, 0.6, 0.61], 2.05, [1.95, 2.2]))
    rows = {r[1]: r for r in compare_runs(a, b)["rows"]}
    assert rows["teacher"][7] == "same within spread"
    assert rows["student"][7] == "B slower" and rows["student"][10] == "same within spread"
    out = kdx("compare", a, b, "--json").stdout
    assert json.loads(out.strip().splitlines()[-1])["warnings"] == []


def test_compare_refuses_different_thread_settings(tmp_path):
    a = _run(tmp_path, "a", _figs(0.5, [0.5], 2.0, [1.9, 2.1], threads=2))
    b = _run(tmp_path, "b", _figs(0.5, [0.5], 2.0, [1.9, 2.1], threads=1))
    fails("compare", a, b, message="--allow-different-settings")
    result = kdx("compare", a, b, "--allow-different-settings")
    assert "warning: runs A and B were benchmarked with different settings (threads 2 vs 1)" in (
        result.stderr
    )
