"""``distill-and-export``: the stages in order, over one run directory."""

from __future__ import annotations

import time
from pathlib import Path

from kdexport import recipe as recipes
from kdexport.artifact import MANIFEST, write_text
from kdexport.baseline import compare
from kdexport.benchmark import benchmark
from kdexport.compile import compile, select_targets
from kdexport.distill import Progress, _quiet, check_recipe, distill, train_teacher
from kdexport.errors import KdxError
from kdexport.export import export
from kdexport.parallel import in_torchrun
from kdexport.report import report


def prepare_run(run_dir: str | Path, recipe: str | Path | None = None, overrides=()) -> dict:
    """Resolve the recipe for a run directory and record it there as ``recipe.toml``.

    The recipe is ``recipe`` if given, else the run's own ``recipe.toml``, else the built-in
    default, with ``overrides`` applied. The run-level report and manifest are removed: they are
    made again by ``report`` once every stage is current.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise KdxError(f"{run_dir} is a file; --out needs a directory")
    own = run_dir / "recipe.toml"
    resolved = recipes.load(recipe or (own if own.is_file() else None), overrides)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, "report.md"):
            (run_dir / name).unlink(missing_ok=True)
        write_text(own, recipes.dumps(resolved))
    except OSError as e:
        raise KdxError(f"cannot write to {run_dir} ({e.strerror}); choose another --out") from None
    return resolved


def preflight(r: dict) -> None:
    """Fail before any training on what can be checked cheaply: data, models, checkpoint, targets."""
    check_recipe(r["data"], r["teacher"], r["distill"])
    select_targets(r["compile"]["targets"], r["compile"]["skip_unavailable"])


def distill_and_export(
    out: str | Path = "runs/digits",
    recipe: str | Path | None = None,
    overrides=(),
    progress: Progress = _quiet,
    baseline_seeds: int = 0,
) -> dict:
    """Run every stage of ``recipe`` (default: kdexport/recipes/digits.toml) into ``out``; return figures.

    A teacher already trained in ``out`` with the same parameters and data is reused.
    ``baseline_seeds`` > 0 also compares KD with the student trained from scratch (RUN/baseline).
    """
    if in_torchrun():
        raise KdxError(
            "distill-and-export runs in one process; under torchrun run `kdexport train-teacher` "
            "and `kdexport distill`, then the other stages without torchrun"
        )
    start = time.perf_counter()
    r = prepare_run(out, recipe, overrides)
    preflight(r)
    train_teacher(out, r["data"], progress=progress, **r["teacher"])
    distill(out, r["data"], progress=progress, **r["distill"])
    if baseline_seeds:
        compare(out, r["data"], r["distill"], baseline_seeds, progress)
    export(out, r["data"], progress=progress, **r["export"])
    compile(out, progress=progress, **r["compile"])
    benchmark(out, progress=progress, **r["benchmark"])
    return report(out, wall_s=time.perf_counter() - start)
