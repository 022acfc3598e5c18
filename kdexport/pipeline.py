"""``distill-and-export``: the stages in order, over one run directory; and the table of stages
whose keyword-only parameters are the recipe's sections."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from kdexport import family, modalities
from kdexport import recipe as recipes
from kdexport.artifact import MANIFEST, write_text
from kdexport.baseline import kd_vs_scratch
from kdexport.benchmark import benchmark
from kdexport.compile import compile_targets, select_targets
from kdexport.context import Run
from kdexport.data import load_splits
from kdexport.distill import build_student, distill, parent
from kdexport.errors import KdxError
from kdexport.export import export
from kdexport.progress import Progress, quiet
from kdexport.prune import prune
from kdexport.report import report
from kdexport.serve import serve
from kdexport.teacher import build_teacher, train_teacher
from kdexport.train.parallel import in_torchrun
from kdexport.train.preflight import check_models, check_weighting


def distill_family(
    out: Path,
    progress: Progress = quiet,
    baseline_seeds: int = 0,
    *,
    students: list[str] = [],  # noqa: B006 (read-only)
    budgets: str = "",
) -> dict[str, Path]:
    """[family]: every member of ``students`` (model specs) and a cut of the teacher to each
    budget of the budgets file ``budgets`` (``kdexport.family.budget_students``) as a run of its
    own in OUT/family/NAME, sharing OUT's trained teacher (each compared with its scratch
    baseline over ``baseline_seeds`` when > 0); a member whose run is complete with the same
    recipe is kept (an interrupted family resumes at the member it stopped in)."""
    named = family.check_students(students, budgets)
    done = {}
    for i, (name, spec) in enumerate(named.items()):
        folder = out / family.FOLDER / name
        if not _member_current(out, folder, _member_overrides(spec)):
            _share_teacher(out, folder)
            distill_and_export(
                folder, out / "recipe.toml", _member_overrides(spec), progress, baseline_seeds
            )
        progress("family", i + 1, len(named), name)
        done[name] = folder
    return done


def _member_overrides(spec: str) -> list[str]:
    """A member's recipe: the run's, with ``spec`` as the student and no family of its own."""
    return [f"distill.student={json.dumps(spec)}", "family.students=[]", 'family.budgets=""']


def retire_outdated_members(out: Path, students: list[str], budgets: str = "") -> None:
    """Every member run in OUT/family that is not a current member (no longer in the recipe,
    or made with another teacher or recipe) loses its run-level report and manifest, as
    ``prepare_run`` does for a run: the run's report and plan list only current members, and a
    member of the recipe is made again."""
    named = family.check_students(students, budgets)
    for name, folder in family.members(out).items():
        if name not in named or not _member_current(out, folder, _member_overrides(named[name])):
            for stale in (MANIFEST, "report.md"):
                (folder / stale).unlink(missing_ok=True)


def _same_teacher(out: Path, folder: Path) -> bool:
    theirs = folder / "teacher" / MANIFEST
    return theirs.is_file() and theirs.read_bytes() == (out / "teacher" / MANIFEST).read_bytes()


def _member_current(out: Path, folder: Path, overrides: list[str]) -> bool:
    """Whether a member's run is complete and was made with the run's teacher and the recipe
    it would get now."""
    if not (folder / MANIFEST).is_file() or not _same_teacher(out, folder):
        return False
    wanted = recipes.dumps(recorded(load_recipe(out / "recipe.toml", overrides)))
    return (folder / "recipe.toml").read_text() == wanted


def _share_teacher(out: Path, folder: Path) -> None:
    """The run's trained teacher in a member's run, its files linked (the member's
    ``train-teacher`` finds it current and reuses it)."""
    if _same_teacher(out, folder):
        return
    theirs = folder / "teacher"
    shutil.rmtree(theirs, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out / "teacher", theirs, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


STAGES = {  # recipe section -> the function whose keyword options it holds
    "data": load_splits,
    "teacher": train_teacher,
    "prune": prune,
    "distill": distill,
    "export": export,
    "compile": compile_targets,
    "benchmark": benchmark,
    "family": distill_family,
    "serve": serve,  # kdexport serve-bench, on a complete run
}
# ... and the keys each modality adds to a section (text: data.text_column, ...)
SECTIONS: recipes.Sections = {
    section: (fn, *(m.options[section] for m in modalities.every() if section in m.options))
    for section, fn in STAGES.items()
}


def _other_modalities_keys(resolved: dict):
    """(modality, section, key, default) of every key of another modality than the run's."""
    chosen = resolved["data"]["modality"]
    for other in modalities.every():
        for section, fn in other.options.items():
            if other.name != chosen:
                for key, (_, default, _) in recipes.keys_of(fn).items():
                    yield other.name, section, key, default


def _refuse_other_modalities(resolved: dict) -> None:
    """A key of another modality than the run's, set to other than its default, is a mistake."""
    chosen = resolved["data"]["modality"]
    for other, section, key, default in _other_modalities_keys(resolved):
        if resolved[section][key] != default:
            raise KdxError(
                f"{section}.{key} applies to {other} runs and this run's data.modality is "
                f'"{chosen}"; remove it, or set data.modality = "{other}"'
            )


def recorded(resolved: dict) -> dict:
    """The recipe as a run records it: without the other modalities' keys (at their defaults,
    ``load_recipe`` fills them in again)."""
    out = {section: dict(keys) for section, keys in resolved.items()}
    for _, section, key, _ in _other_modalities_keys(resolved):
        out[section].pop(key, None)
    return out


def load_recipe(recipe: str | Path | None = None, overrides=()) -> dict:
    """A recipe (default: the built-in digits recipe) with ``--set`` overrides, validated and
    complete: every section of ``SECTIONS`` with every key."""
    resolved = recipes.load(SECTIONS, recipe, overrides)
    _refuse_other_modalities(resolved)
    modality = modalities.get(resolved["data"]["modality"])
    resolved["distill"]["student"] = resolved["distill"]["student"] or modality.default_student
    modality.complete_recipe(resolved)
    return resolved


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
    resolved = load_recipe(recipe or (own if own.is_file() else None), overrides)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, "report.md"):
            (run_dir / name).unlink(missing_ok=True)
        write_text(own, recipes.dumps(recorded(resolved)))
    except OSError as e:
        raise KdxError(f"cannot write to {run_dir} ({e.strerror}); choose another --out") from None
    return resolved


def preflight(run: Run, r: dict) -> None:
    """Fail before any training on what can be checked cheaply: data, models, checkpoints,
    feature layers, targets."""
    student = r["distill"]
    check_weighting(student["weighting"], student["kd_weight"])
    splits = run.splits()
    teacher = build_teacher(r["teacher"], splits)
    cut_from = parent(teacher, r["teacher"]["model"], splits)
    check_models(teacher, build_student(student, splits, cut_from), splits, student)
    select_targets(r["compile"]["targets"], r["compile"]["skip_unavailable"])
    for spec in family.check_students(**r["family"]).values():
        member = {**student, "student": spec, "checkpoint": ""}
        check_models(teacher, build_student(member, splits, cut_from), splits, member)


def distill_and_export(
    out: str | Path = "runs/digits",
    recipe: str | Path | None = None,
    overrides=(),
    progress: Progress = quiet,
    baseline_seeds: int = 0,
) -> dict:
    """Run every stage of ``recipe`` (default: kdexport/recipes/digits.toml) into ``out``; return
    the figures.

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
    run = Run(out, r["data"], progress)  # the data is loaded once, for every stage
    preflight(run, r)
    train_teacher(run, **r["teacher"])
    prune(run, r["distill"], r["export"], r["benchmark"], **r["prune"])
    distill(run, **r["distill"])
    if baseline_seeds:
        kd_vs_scratch(run, r["distill"], baseline_seeds)
    export(run, **r["export"])
    compile_targets(run, **r["compile"])
    benchmark(run, **r["benchmark"])
    retire_outdated_members(run.path, **r["family"])
    report(run)  # complete before the family: an interrupted family leaves a complete run
    distill_family(run.path, progress, baseline_seeds, **r["family"])
    return report(run, wall_s=time.perf_counter() - start)
