"""Did distillation help? `distill --baseline` (KD vs scratch over seeds), `kdexport tune` (the
search on the validation split) and the report's section, which says plainly when KD lost."""

import json

from conftest import fails, kdx

from kdexport.baseline import kd_vs_scratch
from kdexport.context import Run
from kdexport.distill import load_student
from kdexport.pipeline import load_recipe
from kdexport.report import distillation_markdown as markdown
from kdexport.report import distillation_summary as summary
from kdexport.report import verdict

SETS = [
    "teacher.model=zoo:mlp-tiny",
    "teacher.epochs=3",
    "distill.student=zoo:mlp-tiny",
    "distill.epochs=2",
    "distill.label_fraction=0.2",
]
ARGS = [a for s in SETS for a in ("--set", s)]


def test_distill_with_baseline_over_seeds(tmp_path):
    run = tmp_path / "run"
    kdx("train-teacher", run, *ARGS)
    out = kdx("distill", run, "--baseline", "--seeds", "2").stdout
    checks = json.loads((run / "baseline" / "manifest.json").read_text())["checks"]
    assert checks["seeds"] == [0, 1]
    for mode in ("kd", "scratch"):
        assert len(checks[mode]["values"]) == 2 and 0 <= checks[mode]["mean"] <= 1
        assert checks[mode]["std"] >= 0
    assert checks["helped"] == (checks["kd"]["mean"] > checks["scratch"]["mean"])
    assert checks["cache_epoch_ratio"] > 0
    assert verdict(checks) in out
    # the student artifact of seed 0 is the baseline's first KD run, read, not trained again
    student = json.loads((run / "student" / "manifest.json").read_text())
    assert student["checks"]["test_accuracy"] == checks["kd"]["values"][0]
    assert student["checks"]["val_accuracy"] == checks["kd"]["val_accuracy"][0]
    trained = kdx("distill", run, "--baseline", "--seeds", "2").stderr
    assert "kd seed 1" in trained and "kd seed 0" not in trained


def test_tune_records_trials_and_writes_the_winner(tmp_path):
    run = tmp_path / "run"
    kdx("train-teacher", run, *ARGS)
    args = ["--temperature", "1", "--temperature", "3", "--kd-weight", "0.3", "--kd-weight", "0.7"]
    out = kdx("tune", run, *args).stdout
    checks = json.loads((run / "tune" / "manifest.json").read_text())["checks"]
    assert len(checks["trials"]) == 4
    best = checks["best"]
    assert best == max(checks["trials"], key=lambda t: (t["val_accuracy"], -t["val_nll"]))
    assert "test" not in json.dumps(checks)  # chosen on the validation split alone
    r = load_recipe(run / "recipe.toml")
    assert (r["distill"]["temperature"], r["distill"]["kd_weight"]) == (
        best["temperature"],
        best["kd_weight"],
    )
    assert f"best: T={best['temperature']:g}" in out
    fails("tune", run, "--temperature", "0", message="temperatures [0.0] must all be > 0")
    fails("tune", run, "--kd-weight", "2", message="must be in [0, 1] with weighting 'alpha'")


def test_report_section_kd_vs_scratch_vs_teacher(run_copy):
    assert "Not measured" in (run_copy / "report.md").read_text()
    r = load_recipe(run_copy / "recipe.toml")
    kd_vs_scratch(Run(run_copy, r["data"]), r["distill"], seeds=2)
    figs = json.loads(kdx("report", run_copy, "--json").stdout.strip().splitlines()[-1])
    assert figs["distillation"]["status"] == "current"
    report = (run_copy / "report.md").read_text()
    assert "## Did distillation help?" in report and "| student from scratch |" in report
    assert verdict(figs["distillation"]) in report
    kdx("distill", run_copy, "--set", "distill.epochs=1")  # other options: the baseline is stale
    assert summary(run_copy, load_student(Run(run_copy, r["data"]))[1])["status"] == "stale"


def test_verdict_says_plainly_when_kd_did_not_help():
    figs = {
        "status": "current",
        "seeds": [0, 1, 2],
        "kd": {"mean": 0.95, "std": 0.01, "values": [0.94, 0.95, 0.96]},
        "scratch": {"mean": 0.96, "std": 0.0, "values": [0.96] * 3},
        "teacher": 0.98,
        "kd_minus_scratch": -0.01,
        "helped": False,
    }
    assert verdict(figs).startswith("KD did not beat the scratch baseline (95.00% vs 96.00%")
    assert "distillation did not help here" in "\n".join(markdown(figs, "runs/x"))
    assert verdict({**figs, "helped": True, "kd_minus_scratch": 0.02}).startswith(
        "KD beat the scratch baseline by +2.00 points"
    )
