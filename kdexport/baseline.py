"""Did distillation help? The same student trained with KD and from scratch, over several seeds.

For each seed both runs use the same student, split, optimiser, schedule and number of steps
(``distill.train_student``); the scratch run sees only the labeled share of the training split
and no teacher. ``kd_vs_scratch`` writes RUN/baseline; ``summary`` and ``markdown`` put it in the
report beside the teacher, and say plainly when KD did not beat the baseline.
"""

from __future__ import annotations

import json
import statistics
from typing import TypedDict

from kdexport.artifact import Artifact
from kdexport.context import Run
from kdexport.distill import student_params, study
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy
from kdexport.teacher import TeacherChecks
from kdexport.train.loop import predict

MODES = ("kd", "scratch")


# What RUN/baseline's manifest records in its checks (JSON on disk, so TypedDicts: they describe
# it exactly at no run-time cost); the report reads them.
class Spread(TypedDict):
    """One mode's test accuracy over the seeds, and its validation accuracy per seed."""

    values: list[float]
    mean: float
    std: float
    val_accuracy: list[float]


class BaselineChecks(TypedDict):
    seeds: list[int]
    kd: Spread
    scratch: Spread
    teacher: float  # the teacher's test accuracy
    kd_minus_scratch: float
    helped: bool
    epoch_train_s: dict[str, float]  # mode -> median seconds per epoch
    cache_epoch_ratio: float


def _spread(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _figures(runs: dict, teacher_accuracy: float, seeds: list[int]) -> BaselineChecks:
    kd, scratch = (_spread(runs[m]["test_accuracy"]) for m in MODES)
    epoch_s = {m: statistics.median(runs[m]["train_s"]) for m in MODES}
    figures: BaselineChecks = {
        "seeds": seeds,
        "kd": {**kd, "val_accuracy": runs["kd"]["val_accuracy"]},
        "scratch": {**scratch, "val_accuracy": runs["scratch"]["val_accuracy"]},
        "teacher": teacher_accuracy,
        "kd_minus_scratch": kd["mean"] - scratch["mean"],
        "helped": kd["mean"] > scratch["mean"],
        "epoch_train_s": epoch_s,
        "cache_epoch_ratio": epoch_s["kd"] / epoch_s["scratch"],
    }
    return figures


def _distilled(run: Run, opts: dict) -> dict | None:
    """The figures of the run's own student when ``kdexport distill`` trained it with exactly
    ``opts`` from the current teacher: that is the KD run of its seed, not trained again."""
    try:
        art = run.open("student")
    except KdxError:
        return None
    if art.parameters != student_params(opts, run.data, run.splits()):
        return None
    history = json.loads(art.file("history.json").read_text())
    return {
        "test_accuracy": art.checks["test_accuracy"],
        "val_accuracy": art.checks["val_accuracy"],
        "train_s": [h["train_s"] for h in history],
    }


def kd_vs_scratch(run: Run, distill_options: dict, seeds: int = 3) -> Artifact:
    """Train the student of ``distill_options`` with KD and from scratch for ``seeds`` seeds
    (distill.seed, +1, ...), alternating; record test accuracy and epoch times in RUN/baseline.
    The KD run of distill.seed is the run's own student where it is current."""
    splits = run.splits()
    seed_list = [distill_options["seed"] + i for i in range(seeds)]
    runs = {m: {"test_accuracy": [], "val_accuracy": [], "train_s": []} for m in MODES}
    with study(run, "baseline", distill_options, seeds) as s:
        for seed in seed_list:
            for mode in MODES:
                opts = {**distill_options, "seed": seed}
                figures = _distilled(run, opts) if mode == "kd" else None
                if figures is None:
                    net, history = s.train(f"{mode} seed {seed}", opts, mode == "scratch")
                    figures = {
                        "test_accuracy": accuracy(predict(net, splits.x_test), splits.y_test),
                        "val_accuracy": accuracy(predict(net, splits.x_val), splits.y_val),
                        "train_s": [h["train_s"] for h in history],
                    }
                runs[mode]["test_accuracy"].append(figures["test_accuracy"])
                runs[mode]["val_accuracy"].append(figures["val_accuracy"])
                runs[mode]["train_s"] += figures["train_s"]
        teacher: TeacherChecks = s.teacher.artifact.checks
        teacher_accuracy = teacher["test_accuracy"]
        return s.publish(_figures(runs, teacher_accuracy, seed_list))
