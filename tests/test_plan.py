"""``kdexport plan``: per device, the most accurate variant whose p90 meets the budget.

The device results are hand-made ``run.py bench`` files (their latencies are chosen, not
measured), so every choice can be checked exactly; no timing asserts.
"""

import json

from conftest import fails, kdx

from kdexport.bundle.runner import RESULT_FORMAT, RESULT_KIND
from kdexport.plan import accuracy, plan, run_facts


def _sha12(run) -> str:
    files = json.loads((run / "export" / "manifest.json").read_text())["files"]
    return files["student.onnx"]["sha256"][:12]


def result(run, path, device, target=None, lat=None, fmt=RESULT_FORMAT, name=None):
    """A ``run.py bench`` result: ``lat`` model -> (p50, p90) at batch 1."""
    lat = lat or {"student": (1.0, 1.2)}
    results = {
        m: {"latency": {"1": {"p50_ms": a, "p90_ms": b}}, "runtime": {"providers": ["CPUEP"]}}
        for m, (a, b) in lat.items()
    }
    doc = {
        "kind": RESULT_KIND,
        "format_version": fmt,
        "device": device,
        "created_unix": 0,
        "bundle": {"name": name or f"student-{_sha12(run)}", "id": "x"},
        "environment": {"cpu": f"cpu of {device}", "logical_cores": 4, "machine": "aarch64"},
        "options": {"target": target, "batch_sizes": [1]},
        "results": results,
    }
    path.write_text(json.dumps(doc))
    return path


def test_the_most_accurate_variant_within_budget_wins_ties_to_the_faster(run_copy, tmp_path):
    r = result(run_copy, tmp_path / "pi.json", "pi", lat={"student": (1, 2), "teacher": (4, 5)})
    acc = {m: accuracy(run_facts(run_copy), m, "portable")[0] for m in ("teacher", "student")}
    wide = plan(run_copy, [r], budget_ms=1000, out=tmp_path / "plan.md")["devices"]["pi"]
    best = max(acc, key=lambda m: (acc[m], m == "student"))  # ties: the student is faster
    assert wide["choice"]["model"] == best and wide["feasible"]
    tight = plan(run_copy, [r], budget_ms=3)["devices"]["pi"]
    assert tight["choice"]["model"] == "student" and tight["choice"]["margin_ms"] == 1
    assert any("p90 5.000 ms > budget 3 ms" in x["reason"] for x in tight["rejected"])
    # Unmeasured variants get the command that would measure them, never a latency.
    assert all("p90_ms" not in u for u in tight["unmeasured"])
    assert any(
        "run.py bench --device pi --target ort-cpu" in (u["command"] or "")
        for u in tight["unmeasured"]
    )
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["devices"]["pi"]["choice"]["model"] == best
    assert (tmp_path / "plan.png").stat().st_size > 0
    assert "| pi |" in (tmp_path / "plan.md").read_text()


def test_a_device_where_nothing_fits_names_the_closest_and_the_miss(run_copy, tmp_path):
    r = result(
        run_copy, tmp_path / "mcu.json", "mcu", lat={"student": (9, 10), "teacher": (30, 40)}
    )
    d = plan(run_copy, [r], budget_ms=4)["devices"]["mcu"]
    assert d["choice"] is None and not d["feasible"]
    assert d["closest"]["model"] == "student" and d["closest"]["misses_by_ms"] == 6


def test_memory_limit_rejects_local_variants_and_says_when_unmeasured(run_copy, tmp_path):
    r = result(run_copy, tmp_path / "pi.json", "pi")
    p = plan(run_copy, [r], budget_ms=1000, max_mb=0.001)["devices"]
    assert "not measured" in p["pi"]["memory_note"] and p["pi"]["feasible"]
    local = p["local"]  # the fast run measures no memory: nothing is rejected for it
    assert all(v["memory"] == "not measured" for v in local["rejected"])


def test_budgets_file_per_device_and_the_cli(run_copy, tmp_path):
    r = result(run_copy, tmp_path / "pi.json", "pi", lat={"student": (1, 2)})
    toml = tmp_path / "budgets.toml"
    toml.write_text("[pi]\nbudget_ms = 1.5\n[local]\nbudget_ms = 1000\n")
    out = kdx("plan", run_copy, r, "--budgets", toml, "-o", tmp_path / "p.md", "--json")
    p = json.loads(out.stdout.strip().splitlines()[-1])
    assert p["devices"]["pi"]["budget_ms"] == 1.5 and not p["devices"]["pi"]["feasible"]
    assert p["devices"]["local"]["feasible"]


def test_bad_input_is_one_line(run_copy, tmp_path):
    ok = result(run_copy, tmp_path / "ok.json", "pi")
    other = result(run_copy, tmp_path / "o.json", "pi", name="student-000000000000")
    fails("plan", run_copy, other, "--budget-ms", 5, message="another run's student")
    fails("plan", run_copy, ok, "--budget-ms", 0, message="give a number above 0")
    fails("plan", run_copy, ok, "--budget-ms", -2, message="give a number above 0")
    toml = tmp_path / "b.toml"
    toml.write_text("[nano]\nbudget_ms = 3\n")
    fails(
        "plan", run_copy, ok, "--budgets", toml, "--budget-ms", 5, message="'nano' has no results"
    )
    toml.write_text("[pi]\nbudget_ms = 0\n")
    fails("plan", run_copy, ok, "--budgets", toml, "--budget-ms", 5, message="above 0")
    old = result(run_copy, tmp_path / "v0.json", "pi", fmt=0)
    fails("plan", run_copy, old, "--budget-ms", 5, message="result format 0")
    slow = result(run_copy, tmp_path / "slow.json", "pi", lat={"student": (5.0, 5.1)})
    fails("plan", run_copy, ok, slow, "--budget-ms", 5, message="disagree beyond their spread")
    fails("plan", run_copy, ok, message="no budget for device")


def test_two_agreeing_results_keep_the_slower(run_copy, tmp_path):
    a = result(run_copy, tmp_path / "a.json", "pi", lat={"student": (1.0, 1.2)})
    b = result(run_copy, tmp_path / "b.json", "pi", lat={"student": (1.1, 1.3)})
    d = plan(run_copy, [a, b], budget_ms=1000)["devices"]["pi"]
    v = d["choice"] if d["choice"]["model"] == "student" else d["rejected"][0]
    assert v["p90_ms"] == 1.3
