"""``kdexport plan``: per device, the most accurate variant whose p90 meets the budget.

The device results are hand-made ``run.py bench`` files (their latencies are chosen, not
measured), so every choice can be checked exactly; no timing asserts.
"""

import json
import subprocess
import sys

import pytest
from conftest import fails, kdx

from kdexport.bundle.runner import RESULT_FORMAT, RESULT_KIND, device_key, fingerprint
from kdexport.errors import KdxError
from kdexport.plan import accuracy, plan, plan_batch, run_facts

QUICK = ["--warmup-iters", "1", "--warmup-s", "0", "--min-iters", "5", "--min-time-s", "0"]
QUICK += ["--rounds", "1"]


def _sha12(run) -> str:
    files = json.loads((run / "export" / "manifest.json").read_text())["files"]
    return files["student.onnx"]["sha256"][:12]


def result(run, path, device, target=None, lat=None, fmt=RESULT_FORMAT, name=None, mem=None):
    """A ``run.py bench`` result: ``lat`` model -> (p50, p90[, spread between rounds]) at
    batch 1; ``mem`` model -> peak MB."""
    lat = lat or {"student": (1.0, 1.2)}
    results = {
        m: {
            "latency": {"1": {"p50_ms": a, "p90_ms": b, "round_spread": (rest or [0.0])[0]}},
            "runtime": {"providers": ["CPUEP"]},
            "memory": {"peak_rss_mb": (mem or {}).get(m)},
        }
        for m, (a, b, *rest) in lat.items()
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
    for batch in ("1x16", "0"):
        fails(
            "plan", run_copy, ok, "--batch", batch, "--budget-ms", 5,
            message=f"--batch {batch}: give a batch size, 1 or more (BATCHxTOKENS is for a text "
            "run); this run was measured at batch sizes 1, 8",
        )  # fmt: skip
    assert plan(run_copy, [ok], budget_ms=5, batch="1")["batch"] == 1


def test_two_agreeing_results_keep_the_slower(run_copy, tmp_path):
    a = result(run_copy, tmp_path / "a.json", "pi", lat={"student": (1.0, 1.2)})
    b = result(run_copy, tmp_path / "b.json", "pi", lat={"student": (1.1, 1.3)})
    d = plan(run_copy, [a, b], budget_ms=1000)["devices"]["pi"]
    v = d["choice"] if d["choice"]["model"] == "student" else d["rejected"][0]
    assert v["p90_ms"] == 1.3


def test_equal_accuracy_goes_to_the_simpler_unless_faster_beyond_noise(run_copy, tmp_path):
    # The portable file and ort-cpu's form: the same graph under the same runtime, equal accuracy.
    portable = result(run_copy, tmp_path / "a.json", "pi", lat={"student": (0.9, 1.0)})
    close = result(run_copy, tmp_path / "b.json", "pi", "ort-cpu", lat={"student": (0.9, 0.95)})
    d = plan(run_copy, [portable, close], budget_ms=10)["devices"]["pi"]
    assert (d["choice"]["target"], d["choice"]["variant"]) == ("portable", "student@portable")
    assert "simpler and not slower beyond noise" in d["rejected"][0]["reason"]
    fast = result(run_copy, tmp_path / "c.json", "pi", "ort-cpu", lat={"student": (0.5, 0.6)})
    d = plan(run_copy, [portable, fast], budget_ms=10)["devices"]["pi"]
    assert d["choice"]["target"] == "ort-cpu"
    assert "as accurate and faster" in d["rejected"][0]["reason"]


def test_spread_memory_and_min_accuracy_reject_variants(run_copy, tmp_path):
    wobbly = result(run_copy, tmp_path / "w.json", "pi", lat={"student": (0.8, 1.0, 0.5)})
    d = plan(run_copy, [wobbly], budget_ms=1.2)["devices"]["pi"]
    assert (
        d["choice"] is None
        and "p90 1.000 ms + 50.0% spread > budget 1.2 ms" in (d["closest"]["reason"])
    )
    assert d["closest"]["misses_by_ms"] == pytest.approx(0.3)
    big = result(run_copy, tmp_path / "m.json", "pi", mem={"student": 100.0})
    d = plan(run_copy, [big], budget_ms=10, max_mb=50)["devices"]["pi"]
    assert "peak memory 100.0 MB > 50 MB" in d["closest"]["reason"] and d["memory_note"] is None
    lat = {"student": (1, 1.2), "teacher": (2, 2.2)}
    both = result(run_copy, tmp_path / "t.json", "pi", lat=lat)
    acc = {m: accuracy(run_facts(run_copy), m, "portable")[0] for m in lat}
    d = plan(run_copy, [both], budget_ms=10, min_accuracy=1.0)["devices"]["pi"]
    reasons = {v["model"]: v["reason"] for v in [d["closest"], *d["rejected"]]}
    if max(acc.values()) < 1.0:
        assert d["choice"] is None
    assert f"accuracy {acc['student']:.4f} < 1" in reasons["student"]
    with pytest.raises(KdxError, match="give a share of the test set"):
        plan(run_copy, [both], budget_ms=10, min_accuracy=95)


def test_fingerprint_names_the_hardware_only_and_keys_budgets(run_copy, tmp_path):
    env = {"cpu": "Cortex-A76", "logical_cores": 4, "machine": "aarch64", "os": "Linux 6.1"}
    key = device_key(env)
    assert len(key) == 12 and key == device_key({**env, "os": "Linux 6.6", "python": "3.12"})
    assert key != device_key({**env, "logical_cores": 8})
    assert key != device_key({**env, "cpu": "Cortex-A72"})
    r = result(run_copy, tmp_path / "pi.json", "pi", lat={"student": (1, 2)})
    pi_key = device_key(json.loads(r.read_text())["environment"])
    toml = tmp_path / "budgets.toml"
    toml.write_text(f'["{pi_key}"]\nbudget_ms = 1.5\n')
    d = plan(run_copy, [r], budget_ms=1000, budgets=toml)["devices"]
    assert d["pi"]["fingerprint"] == pi_key and d["pi"]["budget_ms"] == 1.5
    assert d["local"]["budget_ms"] == 1000


def _device(root, *args, code=0):
    r = subprocess.run(
        [sys.executable, str(root / "run.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=root.parent,
        timeout=120,
    )
    assert r.returncode == code, (r.stdout, r.stderr)
    return r


def test_a_plan_bundle_runs_each_devices_variant_and_measures_unplanned_ones(run_copy, tmp_path):
    lat = {"student": (1.0, 1.2), "teacher": (3.0, 3.5)}
    pi = result(run_copy, tmp_path / "pi.json", "pi", "ort-cpu", lat=lat)
    kdx("plan", run_copy, pi, "--budget-ms", 2)  # into the run: its report gets the plan
    report = (run_copy / "report.md").read_text()
    assert "## Placement" in report and "(plan/plan.png)" in report
    assert (run_copy / "plan" / "plan.png").stat().st_size > 0
    bundle = tmp_path / "b"
    kdx("package", run_copy, "--dir", bundle, "--plan", run_copy / "plan" / "plan.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["plan"]["devices"]["pi"]["variant"] == "student@ort-cpu"
    assert "ort-cpu" in manifest["compiled"]
    _device(bundle, "verify")

    again = tmp_path / "pi-again.json"
    r = _device(bundle, "bench", "--device", "pi", *QUICK, "--out", again)
    assert "plan: device pi runs student@ort-cpu (budget 2 ms" in r.stdout
    measured = json.loads(again.read_text())
    assert measured["options"]["target"] == "ort-cpu" and measured["options"]["batch_sizes"] == [1]
    assert measured["plan"]["variant"] == "student@ort-cpu"
    assert measured["plan"]["within_budget"] == (measured["plan"]["p90_ms"] <= 2)
    assert measured["results"]["student"]["memory"]["peak_rss_mb"] > 0
    golden = bundle / "golden" / "input.npy"
    r = _device(bundle, "predict", golden, "--device", "pi", "--json")
    assert json.loads(r.stdout)["variant"] == "student@ort-cpu" and "device pi" in r.stderr
    r = _device(bundle, "predict", golden, "--variant", "student@portable", "--json")
    assert json.loads(r.stdout)["variant"] == "student@portable"

    # A device the plan does not hold: said, and every variant measured, one file each.
    nano = tmp_path / "nano.json"
    r = _device(bundle, "bench", "--device", "nano", *QUICK, "--batch-sizes", "1", "--out", nano)
    assert "(nano, fingerprint" in r.stdout and "measuring every variant" in r.stdout
    files = [nano, tmp_path / "nano-ort-cpu.json"]
    assert all(f.is_file() for f in files)
    replanned = plan(run_copy, [pi, *files], budget_ms=1000)["devices"]
    assert replanned["nano"]["feasible"] and replanned["nano"]["choice"]["peak_mb"] > 0

    # Found by fingerprint without --device; two planned devices of one fingerprint: one line.
    plan_entry = manifest["plan"]["devices"]["pi"]
    manifest["plan"]["devices"] = {"box": {**plan_entry, "fingerprint": device_key(fingerprint())}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    r = _device(bundle, "predict", golden, "--json")
    assert "plan: device box runs student@ort-cpu" in r.stderr
    manifest["plan"]["devices"]["box2"] = manifest["plan"]["devices"]["box"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    r = _device(bundle, "predict", golden, code=1)
    assert "several devices with this device's fingerprint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _device(bundle, "predict", golden, "--variant", "teacher@x", "--target", "y", code=1)
    assert "give --variant or --target, not both" in r.stderr
    r = _device(bundle, "predict", golden, "--variant", "mentor@ort-cpu", code=1)
    assert "give [teacher@|student@]TARGET" in r.stderr


def test_package_plan_bad_input(run_copy, tmp_path):
    pi = result(run_copy, tmp_path / "pi.json", "pi")
    kdx("plan", run_copy, pi, "--budget-ms", 2, "-o", tmp_path / "plan.md")
    doc = json.loads((tmp_path / "plan.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**doc, "student": "student-000000000000"}))
    fails("package", run_copy, "--dir", tmp_path / "b", "--plan", other, message="not this run's")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**doc, "format_version": 0}))
    fails("package", run_copy, "--dir", tmp_path / "b", "--plan", old, message="plan format 0")
    fails("package", run_copy, "--dir", tmp_path / "b", "--plan", pi, message="not a plan")
    fails(
        "package",
        run_copy,
        "--dir",
        tmp_path / "b",
        "--plan",
        tmp_path / "no.json",
        message="no such plan",
    )
    assert not (tmp_path / "b").exists()


def test_plan_batch_is_a_shape_for_text_runs_and_an_int_for_image_runs():
    def bench(*keys):
        return {"targets": {"ort-cpu": {"student": {"latency": {k: {} for k in keys}}}}}

    text = bench("8x128", "1x16", "1x128")
    assert plan_batch(text, None) == "1x128"  # the smallest batch at its longest sequence
    assert plan_batch(text, "8x128") == "8x128"
    with pytest.raises(
        KdxError, match=r"--batch 8: this text run was measured at shapes 1x16, 1x128, 8x128"
    ):
        plan_batch(text, "8")
    image = bench("1", "64")
    assert plan_batch(image, None) == 1 and plan_batch(image, "64") == 64
    assert plan_batch(image, 8) == 8  # another batch size: devices may have measured it
    with pytest.raises(KdxError, match="measured at batch sizes 1, 64"):
        plan_batch(image, "1x128")
