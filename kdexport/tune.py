"""A small search over the KD temperature and weight, scored on the validation split.

Every (temperature, kd_weight) pair trains the student with KD for each of ``seeds`` seeds; the
pair with the best mean validation accuracy wins (ties: the lower mean validation NLL at the
chosen epochs). The test split is never looked at. All trials go to RUN/tune; the winner is
written into RUN/recipe.toml, so the next ``kdexport distill RUN`` trains with it.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import TypedDict

from kdexport import recipe as recipes
from kdexport.artifact import Artifact, write_text
from kdexport.context import Run
from kdexport.distill import study
from kdexport.errors import KdxError
from kdexport.options import read_toml
from kdexport.train.preflight import check_weighting

TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
KD_WEIGHTS = (0.5, 0.9)


# What RUN/tune's manifest records in its checks (JSON on disk, so TypedDicts: they describe it
# exactly at no run-time cost).
class Trial(TypedDict):
    """One (temperature, kd_weight) pair, its means over the seeds at their kept epochs."""

    temperature: float
    kd_weight: float
    val_accuracy: float
    val_nll: float
    best_epochs: list[int]


class TuneChecks(TypedDict):
    trials: list[Trial]
    best: Trial
    score: str


def _best_epoch(history: list) -> dict:
    """The epoch whose weights the run kept: the first with the best validation accuracy."""
    return max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))


def _check_grid(temperatures, kd_weights, weighting: str) -> None:
    if not temperatures or not kd_weights:
        raise KdxError("give at least one temperature and one KD weight to search over")
    if min(temperatures) <= 0:
        raise KdxError(f"temperatures {list(temperatures)} must all be > 0")
    if min(kd_weights) < 0:
        raise KdxError(f"KD weights {list(kd_weights)} must all be >= 0")
    check_weighting(weighting, max(kd_weights))


def _record(run_dir: Path, best: dict) -> None:
    """Write the winner into the run's recipe.toml (when the run has one)."""
    path = run_dir / "recipe.toml"
    if path.is_file():
        recipe = read_toml(path)  # complete and checked when the run recorded it
        recipe["distill"].update(temperature=best["temperature"], kd_weight=best["kd_weight"])
        write_text(path, recipes.dumps(recipe))


def tune(
    run: Run,
    distill_options: dict,
    temperatures=TEMPERATURES,
    kd_weights=KD_WEIGHTS,
    seeds: int = 1,
) -> Artifact:
    """Search ``temperatures`` x ``kd_weights``; write RUN/tune and the winner into the recipe."""
    _check_grid(temperatures, kd_weights, distill_options["weighting"])
    trials: list[Trial] = []
    with study(run, "tune", distill_options, seeds) as s:
        for t, w in itertools.product(temperatures, kd_weights):
            kept = []
            for i in range(seeds):
                opts = {**distill_options, "temperature": float(t), "kd_weight": float(w)}
                opts["seed"] += i
                history = s.train(f"T={t:g} w={w:g} seed {opts['seed']}", opts)[1]
                kept.append(_best_epoch(history))
            trials.append(
                {
                    "temperature": float(t),
                    "kd_weight": float(w),
                    "val_accuracy": statistics.fmean(e["val_accuracy"] for e in kept),
                    "val_nll": statistics.fmean(e["val_nll"] for e in kept),
                    "best_epochs": [e["epoch"] for e in kept],
                }
            )
        best = max(trials, key=lambda r: (r["val_accuracy"], -r["val_nll"]))
        checks: TuneChecks = {
            "trials": trials,
            "best": best,
            "score": "mean validation accuracy, then NLL",
        }
        art = s.publish(checks)
        main = s.cluster.main
    if main:
        _record(run.path, best)
    return art
