"""Did distillation help? The same student trained with KD and from scratch, over several seeds.

For each seed both runs use the same student, split, optimiser, schedule and number of steps
(``distill.train_student``); the scratch run sees only the labeled share of the training split
and no teacher. ``compare`` writes RUN/baseline; ``summary`` and ``markdown`` put it in the
report beside the teacher, and say plainly when KD did not beat the baseline.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from kdexport.artifact import Artifact
from kdexport.data import load_splits
from kdexport.distill import load_teacher, publish, student_params, train_student
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy
from kdexport.parallel import cluster
from kdexport.trainer import Progress, Session, predict, quiet

MODES = ("kd", "scratch")


def _spread(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _figures(runs: dict, teacher_accuracy: float, seeds: list[int]) -> dict:
    kd, scratch = (_spread(runs[m]["test_accuracy"]) for m in MODES)
    epoch_s = {m: statistics.median(runs[m]["train_s"]) for m in MODES}
    return {
        "seeds": seeds,
        "kd": {**kd, "val_accuracy": runs["kd"]["val_accuracy"]},
        "scratch": {**scratch, "val_accuracy": runs["scratch"]["val_accuracy"]},
        "teacher": teacher_accuracy,
        "kd_minus_scratch": kd["mean"] - scratch["mean"],
        "helped": kd["mean"] > scratch["mean"],
        "epoch_train_s": epoch_s,
        "cache_epoch_ratio": epoch_s["kd"] / epoch_s["scratch"],
    }


def compare(
    run_dir: str | Path,
    data: dict,
    distill_options: dict,
    seeds: int = 3,
    progress: Progress = quiet,
) -> Artifact:
    """Train the student of ``distill_options`` with KD and from scratch for ``seeds`` seeds
    (distill.seed, +1, ...), alternating; record test accuracy and epoch times in RUN/baseline."""
    if seeds < 1:
        raise KdxError(f"--seeds {seeds}: give at least 1")
    splits = load_splits(**data)
    teacher = load_teacher(run_dir, splits)
    seed_list = [distill_options["seed"] + i for i in range(seeds)]
    runs = {m: {"test_accuracy": [], "val_accuracy": [], "train_s": []} for m in MODES}
    with cluster(distill_options["device"]) as c:
        for seed in seed_list:
            for mode in MODES:
                session = Session(f"{mode} seed {seed}", progress if c.main else quiet, c)
                opts = {**distill_options, "seed": seed}
                net, history = train_student(
                    run_dir, data["seed"], splits, teacher, opts, session, mode == "scratch"
                )
                runs[mode]["test_accuracy"].append(
                    accuracy(predict(net, splits.x_test), splits.y_test)
                )
                runs[mode]["val_accuracy"].append(
                    accuracy(predict(net, splits.x_val), splits.y_val)
                )
                runs[mode]["train_s"] += [h["train_s"] for h in history]
        params = {**student_params(distill_options, data, splits), "seeds": seeds}
        figures = _figures(runs, teacher[1].checks["test_accuracy"], seed_list)
        return publish(
            c,
            Path(run_dir) / "baseline",
            "baseline",
            params,
            [teacher[1]],
            lambda w: w.checks.update(figures),
        )


def summary(run_dir: str | Path, student: Artifact) -> dict:
    """The baseline figures for the report, or why there are none that fit ``student``."""
    path = Path(run_dir) / "baseline"
    if not path.is_dir():
        return {"status": "none"}
    try:
        art = Artifact.open(path, "baseline", f"kdexport distill {run_dir} --baseline")
    except KdxError:
        return {"status": "stale"}
    same = {k: v for k, v in art.parameters.items() if k != "seeds"}
    if same != student.parameters:
        return {"status": "stale"}
    return {"status": "current", **art.checks}


def _pct(f: dict) -> str:
    return f"{f['mean']:.2%} ± {f['std'] * 100:.2f}"


def _per_seed(f: dict) -> str:
    return ", ".join(f"{v:.2%}" for v in f["values"])


def verdict(b: dict) -> str:
    """One plain sentence: did KD beat the scratch baseline?"""
    n = len(b["seeds"])
    diff = b["kd_minus_scratch"] * 100
    if b["helped"]:
        return f"KD beat the scratch baseline by {diff:+.2f} points of test accuracy (mean of {n} seeds)."
    return (
        f"KD did not beat the scratch baseline ({b['kd']['mean']:.2%} vs {b['scratch']['mean']:.2%}, "
        f"mean of {n} seeds): distillation did not help here; the student trained from scratch did at least as well."
    )


def markdown(b: dict, run_dir: str | Path) -> list[str]:
    """The report's section on KD vs scratch vs teacher."""
    lines = ["", "## Did distillation help?", ""]
    if b["status"] != "current":
        hint = f"run `kdexport distill {run_dir} --baseline --seeds 3` to measure it"
        if b["status"] == "stale":
            return [
                *lines,
                f"The baseline in `baseline/` is for other options or an older teacher; {hint}.",
                "",
            ]
        return [*lines, f"Not measured: {hint}.", ""]
    return [
        *lines,
        f"Test accuracy over seeds {', '.join(map(str, b['seeds']))} (mean ± standard deviation "
        "in points). The scratch student trains without a teacher on the labeled share only, "
        "with the same optimiser, schedule and number of steps.",
        "",
        "| model | test accuracy | per seed |",
        "|---|---|---|",
        f"| teacher | {b['teacher']:.2%} | |",
        f"| student with KD | {_pct(b['kd'])} | {_per_seed(b['kd'])} |",
        f"| student from scratch | {_pct(b['scratch'])} | {_per_seed(b['scratch'])} |",
        "",
        verdict(b),
        "",
    ]
