"""Did distillation help on digits? KD vs the same student from scratch vs the teacher.

    .venv/bin/python tools/bench_distill.py [--out runs/bench-distill] [--seeds 3]

For each recipe (kdexport/recipes/digits-label-scarce.toml, kdexport/recipes/digits.toml): train the teacher once
(both recipes share its section), search temperature x KD weight on the validation split
(``kdexport tune``, one seed per trial), then train the student with KD and from scratch for
--seeds seeds, alternately (``kdexport distill --baseline``), and read their test accuracy. The
label-scarce case is also run with the default CNN student (no search), for comparison.

The cache ratio is the median KD epoch (teacher outputs cached) over the median scratch epoch of
the same student and the same number of steps, measured side by side in this process: short
runs (3 epochs) of each, alternating, 6 of each; training time only (no validation), on one
thread (with two, OpenMP's hand-offs swamp a small model's steps and other processes' load
decides the figure). It is measured for the default recipe's student and for the label-scarce
one; the uncached ratio runs the default one with random augmentation, where the teacher runs
on every batch. Prints one line per goal and, last, one JSON object with the figures. Exit
status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

import torch

from kdexport import recipe as recipes
from kdexport.baseline import kd_vs_scratch
from kdexport.context import Run
from kdexport.distill import train_student
from kdexport.pipeline import load_recipe, prepare_run
from kdexport.progress import quiet
from kdexport.teacher import load_teacher, train_teacher
from kdexport.train.loop import Session
from kdexport.train.parallel import cluster
from kdexport.tune import tune


def _prepare(out: Path, name: str, overrides=()) -> dict:
    """A run directory for a built-in recipe, with the shared teacher trained (or copied)."""
    shared = out / "teacher"
    r = prepare_run(out / name, recipes.builtin_recipe_path(name.split("+")[0]), overrides)
    if shared.is_dir() and not (out / name / "teacher").is_dir():
        shutil.copytree(shared, out / name / "teacher")
    art = train_teacher(Run(out / name, r["data"]), **r["teacher"])
    if not shared.is_dir():
        shutil.copytree(art.path, shared)
    return r


def _figures(checks: dict, options: dict) -> dict:
    return {
        "kd": checks["kd"]["mean"],
        "scratch": checks["scratch"]["mean"],
        "teacher": checks["teacher"],
        "kd_std": checks["kd"]["std"],
        "scratch_std": checks["scratch"]["std"],
        "seeds": len(checks["seeds"]),
        "kd_values": checks["kd"]["values"],
        "scratch_values": checks["scratch"]["values"],
        "student": options["student"],
        "temperature": options["temperature"],
        "kd_weight": options["kd_weight"],
    }


def _tuned_comparison(out: Path, name: str, seeds: int, overrides=(), search=True) -> tuple:
    r = _prepare(out, name, overrides)
    if search:
        trials = tune(Run(out / name, r["data"]), r["distill"]).checks["trials"]
        r = load_recipe(out / name / "recipe.toml")
    else:
        trials = []
    checks = kd_vs_scratch(Run(out / name, r["data"]), r["distill"], seeds).checks
    return {**_figures(checks, r["distill"]), "search": trials}, checks


def _epoch_ratio(out: Path, name: str, overrides=(), rounds: int = 6) -> dict:
    """Median KD epoch / median scratch epoch, short runs alternating (training time only)."""
    r = _prepare(out, name, overrides)
    run, opts = Run(out / name, r["data"]), {**r["distill"], "epochs": 3}
    teacher = load_teacher(run)
    times = {"kd": [], "scratch": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with cluster(opts["device"]) as c:
        for _ in range(rounds):
            for mode in times:
                session = Session(mode, quiet, c)
                _, history = train_student(run, teacher, opts, session, mode == "scratch")
                times[mode] += [h["train_s"] for h in history]
    torch.set_num_threads(threads)
    medians = {m: statistics.median(t) for m, t in times.items()}
    return {"ratio": medians["kd"] / medians["scratch"], "epoch_train_s": medians}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-distill")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    full, _ = _tuned_comparison(out, "digits", args.seeds)
    scarce, _ = _tuned_comparison(out, "digits-label-scarce", args.seeds)
    cnn_sets = ["distill.student='zoo:digits-cnn-small'"]
    scarce_cnn, _ = _tuned_comparison(out, "digits-label-scarce+cnn", args.seeds, cnn_sets, False)
    cached = _epoch_ratio(out, "digits")
    figs = {
        "label_scarce": scarce,
        "full_label": full,
        "label_scarce_cnn_student": scarce_cnn,
        "cache_epoch_ratio": cached["ratio"],
        "epoch_train_s": cached["epoch_train_s"],
        "cache_epoch_ratio_label_scarce": _epoch_ratio(out, "digits-label-scarce")["ratio"],
        "uncached_epoch_ratio": _epoch_ratio(out, "digits+augment", ["distill.augment='shift'"])[
            "ratio"
        ],
        "wall_s": time.perf_counter() - start,
    }
    gap = (scarce["kd"] - scarce["scratch"]) * 100
    goals = {
        "label-scarce: KD - scratch >= 5 points": (gap, gap >= 5),
        "full-label: KD >= scratch (points)": (
            (full["kd"] - full["scratch"]) * 100,
            full["kd"] >= full["scratch"],
        ),
        "cached KD epoch <= 1.3x scratch epoch": (
            figs["cache_epoch_ratio"],
            figs["cache_epoch_ratio"] <= 1.3,
        ),
    }
    for goal, (value, ok) in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}: {value:.4g}")
    print(json.dumps(figs, sort_keys=True))
    return 0 if all(ok for _, ok in goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
