"""The default recipe at full length (slow: about 20 s here; KDEXPORT_SLOW=1 runs it).

Checks the accuracy and size goals; the latency goal is a ratio measured side by side by
tools/check_default_run.py, not asserted here.
"""

import pytest

from kdexport.pipeline import distill_and_export


@pytest.mark.slow
def test_default_recipe_meets_its_goals(tmp_path):
    figs = distill_and_export(tmp_path / "run")
    for entry in figs["targets"].values():
        teacher, student = entry["teacher"], entry["student"]
        assert teacher["accuracy"] - student["accuracy"] <= 0.03
        assert teacher["params"] >= 20 * student["params"]
        for f in (teacher, student):
            assert f["max_abs_diff"] <= 1e-4 and f["top1_agreement"] == 1.0


def test_training_is_deterministic(tmp_path):
    from kdexport.artifact import sha256
    from kdexport.context import Run
    from kdexport.pipeline import load_recipe
    from kdexport.teacher import train_teacher

    r = load_recipe(overrides=["teacher.epochs=1", "teacher.model=zoo:mlp-tiny"])
    a = train_teacher(Run(tmp_path / "a", r["data"]), **r["teacher"])
    b = train_teacher(Run(tmp_path / "b", r["data"]), **r["teacher"])
    assert sha256(a.file("model.pt")) == sha256(b.file("model.pt"))
