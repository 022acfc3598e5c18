"""The ``kdexport`` command: each subcommand parses, calls one library function, prints."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from kdexport.errors import KdxError

if TYPE_CHECKING:  # what each stage's checks hold; the stages are imported inside the commands
    from kdexport.baseline import BaselineChecks
    from kdexport.compile import CompileChecks
    from kdexport.distill import StudentChecks
    from kdexport.export import ExportChecks
    from kdexport.teacher import TeacherChecks
    from kdexport.tune import TuneChecks

DEFAULT_RUN = "runs/digits"


class _Cli(click.Group):
    """Turns every failure into one line on stderr (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # the reader went away (| head): stop quietly, as other tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {_one_line(e)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: complete artifacts were kept; rerun the command", err=True)
            ctx.exit(130)


# A dependency this Python lacks -> how to get it (the rest: pip install NAME).
_INSTALL = {
    "torch": "install PyTorch first, the build for your machine (docs/install.md; ./run.sh and "
    "./test.sh set up .venv with it)",
    "onnxruntime": "pip install 'kdexport[cpu]' (or '[gpu]')",
    "sklearn": "pip install scikit-learn",
    "PIL": "pip install pillow",
    "tomli_w": "pip install tomli-w",
}


def _missing_package(e: ModuleNotFoundError) -> str | None:
    """One line for a dependency that is not installed; None for a module of kdexport itself."""
    top = (e.name or "").split(".")[0]
    if not top or top == "kdexport":
        return None
    hint = _INSTALL.get(top, f"pip install {top}")
    return (
        f"this command needs the {top} package, which {sys.executable} does not have: {hint} "
        "(from a clone, pip install -e '.[cpu]' installs every dependency but PyTorch)"
    )


def _one_line(e: Exception) -> str:
    if isinstance(e, KdxError):
        return str(e)
    if isinstance(e, ModuleNotFoundError) and (missing := _missing_package(e)):
        return missing
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename or ''}".rstrip(": ")
    return f"unexpected {type(e).__name__}: {str(e)[:300]} (rerun with --debug for the traceback)"


@contextlib.contextmanager
def _progress(enabled: bool = True) -> Iterator:
    """A rich progress display on stderr; yields the stages' progress callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, info: str) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, info="")
        bar.update(tasks[stage], completed=done, total=total, info=info)

    with bar:
        yield update


def _recipe_options(fn):
    fn = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one recipe option, e.g. --set distill.epochs=5 (repeatable).",
    )(fn)
    fn = click.option(
        "--recipe",
        type=click.Path(dir_okay=False),
        default=None,
        help="Recipe TOML (default: the run's recipe.toml, else kdexport/recipes/digits.toml).",
    )(fn)
    return fn


_run_arg = click.argument("run_dir", default=DEFAULT_RUN, type=click.Path(file_okay=False))


def _console():
    """Where tables and their notes go: what they hold (paths, reasons, pip extras such as
    onnxruntime-gpu[cuda,cudnn]) is printed as it is, never read as rich markup."""
    from rich.console import Console

    return Console(width=200, markup=False)


def _print_table(figs: dict) -> None:
    from rich.table import Table

    from kdexport.report import header, notes, rows

    table = Table(*header(figs), title=f"kdexport: {figs['run_dir']}")
    for row in rows(figs):
        table.add_row(*row)
    console = _console()
    console.print(table)
    for line in notes(figs):
        console.print(line)


@click.group(cls=_Cli)
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.version_option(package_name="kdexport")
def cli(debug: bool) -> None:
    """Distill a PyTorch teacher into a small student, export it to ONNX, compile, check and
    benchmark it on every target. Run `kdexport distill-and-export` for the whole pipeline."""


@cli.command("distill-and-export")
@click.option(
    "--out",
    default=DEFAULT_RUN,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory.",
)
@_recipe_options
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON line last.")
@click.option("--baseline", is_flag=True, help="Also train the student from scratch to compare.")
@click.option("--seeds", default=3, show_default=True, help="Seeds for --baseline.")
def distill_and_export_cmd(out, recipe, overrides, as_json, baseline, seeds):
    """Run every stage, from teacher training to the report.

    Trains the teacher (or reuses a matching one in --out), distills, exports, compiles for
    every available target, checks parity and accuracy, benchmarks, and writes the report.
    """
    from kdexport.pipeline import distill_and_export

    with _progress() as progress:
        figs = distill_and_export(out, recipe, overrides, progress, seeds if baseline else 0)
    _print_table(figs)
    click.echo(f"report: {out}/report.md  ({figs['wall_s']:.0f} s)")
    if as_json:
        click.echo(json.dumps(figs, sort_keys=True))


@cli.command("train-teacher")
@_run_arg
@_recipe_options
@click.option("--retrain", is_flag=True, help="Train again even if a matching teacher exists.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoints/teacher.pt.")
def train_teacher_cmd(run_dir, recipe, overrides, retrain, resume):
    """Train the teacher ([teacher] section) into RUN_DIR/teacher."""
    from kdexport.context import Run
    from kdexport.pipeline import prepare_run
    from kdexport.teacher import train_teacher

    r = prepare_run(run_dir, recipe, overrides)
    with _progress() as progress:
        run = Run(run_dir, r["data"], progress, resume=resume, retrain=retrain)
        art = train_teacher(run, **r["teacher"])
    teacher: TeacherChecks = art.checks
    click.echo(f"teacher: {art.path}  test accuracy {teacher['test_accuracy']:.2%}")
    if view := teacher.get("onnx_teacher"):
        from kdexport.onnx_teacher import summary

        click.echo(f"teacher: {summary(view)}")


@cli.command("distill")
@_run_arg
@_recipe_options
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoints/student.pt.")
@click.option("--baseline", is_flag=True, help="Then train the student from scratch to compare.")
@click.option(
    "--seeds", default=3, show_default=True, help="Seeds for --baseline (each: KD and scratch)."
)
def distill_cmd(run_dir, recipe, overrides, resume, baseline, seeds):
    """Distill the teacher into the student ([distill] section).

    With --baseline, also trains the same student with KD and from scratch for --seeds seeds
    (RUN_DIR/baseline) and says whether KD helped. Runs under torchrun as it is.
    """
    from kdexport.baseline import kd_vs_scratch
    from kdexport.context import Run
    from kdexport.distill import distill
    from kdexport.pipeline import prepare_run
    from kdexport.report import verdict

    r = prepare_run(run_dir, recipe, overrides)
    with _progress() as progress:
        run = Run(run_dir, r["data"], progress, resume=resume)
        art = distill(run, **r["distill"])
        b = kd_vs_scratch(run, r["distill"], seeds) if baseline else None
    student: StudentChecks = art.checks
    click.echo(f"student: {art.path}  test accuracy {student['test_accuracy']:.2%}")
    if b:
        figures: BaselineChecks = b.checks
        click.echo(verdict(figures))


@cli.command("tune")
@_run_arg
@_recipe_options
@click.option(
    "--temperature",
    "temperatures",
    type=float,
    multiple=True,
    help="Temperatures to try (repeatable; default 1 2 4 8).",
)
@click.option(
    "--kd-weight",
    "kd_weights",
    type=float,
    multiple=True,
    help="KD weights to try (repeatable; default 0.5 0.9).",
)
@click.option(
    "--seeds", default=1, show_default=True, help="Seeds per trial (scored by their mean)."
)
def tune_cmd(run_dir, recipe, overrides, temperatures, kd_weights, seeds):
    """Search the KD temperature and weight on the validation split.

    Records every trial in RUN_DIR/tune and writes the best pair into RUN_DIR/recipe.toml, so
    the next `kdexport distill RUN_DIR` trains with it.
    """
    from kdexport.context import Run
    from kdexport.pipeline import prepare_run
    from kdexport.tune import KD_WEIGHTS, TEMPERATURES, tune

    r = prepare_run(run_dir, recipe, overrides)
    grid = (temperatures or TEMPERATURES, kd_weights or KD_WEIGHTS)
    with _progress() as progress:
        art = tune(Run(run_dir, r["data"], progress), r["distill"], *grid, seeds)
    checks: TuneChecks = art.checks
    for t in checks["trials"]:
        click.echo(
            f"T={t['temperature']:g} w={t['kd_weight']:g}  val accuracy {t['val_accuracy']:.2%}  val NLL {t['val_nll']:.4f}"
        )
    best = checks["best"]
    click.echo(
        f"best: T={best['temperature']:g} w={best['kd_weight']:g}, written to {run_dir}/recipe.toml"
    )


@cli.command("export")
@_run_arg
@_recipe_options
@click.option("--opset", type=int, help="ONNX opset (same as --set export.opset=N).")
@click.option("--static", is_flag=True, help="Also write student-static.onnx with a fixed batch.")
@click.option("--checkpoint", help="Export this student state_dict instead of the final one.")
def export_cmd(run_dir, recipe, overrides, opset, static, checkpoint):
    """Export both models to ONNX; check them against PyTorch."""
    from kdexport.context import Run
    from kdexport.export import export
    from kdexport.pipeline import prepare_run

    flags = {"opset": opset, "static": static or None, "student_checkpoint": checkpoint}
    extra = [f"export.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    r = prepare_run(run_dir, recipe, (*overrides, *extra))
    with _progress() as progress:
        art = export(Run(run_dir, r["data"], progress), **r["export"])
    checks: ExportChecks = art.checks
    for m in ("teacher", "student"):
        c = checks[m]
        click.echo(
            f"{art.path}/{m}.onnx  {c['exporter']} opset {c['opset']}  {c['parity']['summary']}"
        )
        if "static" in c:
            click.echo(f"{art.path}/{c['static']['file']}  batch {c['static']['batch']}")


@cli.command("compile")
@_run_arg
@_recipe_options
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Target name or profile .toml (repeatable); these must all be available.",
)
def compile_cmd(run_dir, recipe, overrides, targets):
    """Compile both models per target; check each against PyTorch."""
    from kdexport.compile import compile_targets
    from kdexport.context import Run
    from kdexport.pipeline import prepare_run

    r = prepare_run(run_dir, recipe, overrides)
    opts = {
        **r["compile"],
        **({"targets": list(targets), "skip_unavailable": False} if targets else {}),
    }
    with _progress() as progress:
        art = compile_targets(Run(run_dir, r["data"], progress), **opts)
    checks: CompileChecks = art.checks
    for name, result in checks["targets"].items():
        for m in ("teacher", "student"):
            click.echo(
                f"{name}/{result[m]['file']}  accuracy {result[m]['accuracy']:.2%}  "
                f"{result[m]['parity']['summary']}"
            )
    for name, reason in checks["skipped"].items():
        click.echo(f"skipped {name}: {reason}")


def _latency_lines(checks: dict) -> list[str]:
    lines = []
    for target, entry in checks["targets"].items():
        for model, result in entry.items():
            if model.startswith("speedup"):
                continue
            for size, st in result["latency"].items():
                lo, hi = st["p50_ci95_ms"]
                why = "; ".join(st.get("unstable_reasons", []))
                flag = f"  UNSTABLE ({why})" if st["unstable"] else ""
                lines.append(
                    f"{target} {model} batch {size}: p50 {st['p50_ms']:.4f} ms (95% CI {lo:.4f}-{hi:.4f}), "
                    f"p90 {st['p90_ms']:.4f} ms, {st['throughput_per_s']:,.0f} samples/s{flag}"
                )
        for size, d in entry.get("speedup_detail", {}).items():
            why = "; ".join(d["unstable_reasons"])
            lines.append(
                f"{target} batch {size}: student speed-up {d['ratio']:.2f}x (median of "
                f"{d['rounds']} per-round ratios, IQR {d['iqr'][0]:.2f}-{d['iqr'][1]:.2f})"
                + (f"  UNSTABLE ({why})" if d["unstable"] else "")
            )
    settings = checks.get("settings")
    if settings:
        pinned = f", pinned to CPUs {settings['cpus']}" if settings["pinned"] else ""
        lines.append(f"settings: {settings['threads']} intra-op threads{pinned}")
    return lines


@cli.command("benchmark")
@click.argument("source", default=DEFAULT_RUN, type=click.Path())
@_recipe_options
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="For a .onnx SOURCE: target to time (repeatable; default ort-cpu).",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="For a .onnx SOURCE with symbolic dims: the full input shape, e.g. 1,3,224,224, or "
    "NAME=DIMS per input (repeatable), e.g. --shape input_ids=1,128 --shape mask=1,128.",
)
@click.option(
    "--batch-sizes",
    help="Comma-separated batch sizes, e.g. 1,64 (same as --set benchmark.batch_sizes).",
)
@click.option(
    "--quick", is_flag=True, help="Few iterations, one repeat, no memory probe: a smoke test."
)
@click.option(
    "--threads",
    type=int,
    help="Intra-op threads for every model (default: one per CPU we may use; recorded).",
)
@click.option("--cpus", help="Pin to these CPUs, e.g. 0 or 0-1 (the same for every model).")
@click.option(
    "--until-stable",
    type=float,
    metavar="SECONDS",
    help="Repeat rounds, up to SECONDS per comparison, until the speed-up's IQR is under 5%.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON line last.")
def benchmark_cmd(
    source,
    recipe,
    overrides,
    targets,
    shapes,
    batch_sizes,
    quick,
    threads,
    cpus,
    until_stable,
    as_json,
):
    """Time models: a run directory's teacher and student on every compiled target, or any
    ONNX file (`kdexport benchmark model.onnx --target openvino-cpu`)."""
    from kdexport.benchmark import QUICK, benchmark, benchmark_onnx
    from kdexport.context import Run
    from kdexport.feeds import parse_shapes
    from kdexport.pipeline import load_recipe, prepare_run
    from kdexport.timing import parse_cpus

    if until_stable is not None and until_stable <= 0:
        raise KdxError(f"--until-stable {until_stable:g}: give a time limit in seconds above 0")
    if threads is not None and threads < 1:
        raise KdxError(f"--threads {threads}: give 1 or more (leave it out for one per CPU)")
    if cpus:
        try:
            parse_cpus(cpus)
        except ValueError as e:
            raise KdxError(f"--cpus {e}") from None
    extra = [f"benchmark.batch_sizes=[{batch_sizes}]"] if batch_sizes else []
    extra += [f"benchmark.threads={threads}"] if threads else []
    extra += [f"benchmark.cpus={json.dumps(cpus)}"] if cpus else []
    extra += [f"benchmark.until_stable_s={until_stable}"] if until_stable else []
    extra += [f"benchmark.{k}={json.dumps(v)}" for k, v in QUICK.items()] if quick else []
    if source.endswith(".onnx"):
        r = load_recipe(recipe, (*extra, *overrides))
        dims = parse_shapes(shapes)
        given = bool(batch_sizes) or any(o.startswith("benchmark.batch_sizes") for o in overrides)
        checks = benchmark_onnx(source, list(targets) or ["ort-cpu"], dims, r["benchmark"], given)
    else:
        r = prepare_run(source, recipe, (*extra, *overrides))
        with _progress() as progress:
            checks = benchmark(Run(source, r["data"], progress), **r["benchmark"]).checks
    for line in _latency_lines(checks):
        click.echo(line)
    if as_json:
        click.echo(json.dumps(checks, sort_keys=True))


@cli.command("serve-bench")
@_run_arg
@click.option(
    "--p99-ms", type=float, help="The Server scenario's p99 latency bound (serve.p99_ms)."
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    help="server (the highest rate meeting --p99-ms) and/or offline (default: both).",
)
@click.option("--target", "targets", multiple=True, help="A compiled target (default: every one).")
@click.option("--qps", type=float, help="A goal in requests per second: servers needed for it.")
@click.option("--duration-s", type=float, help="Each LoadGen run's minimum duration (seconds).")
@click.option("--max-batch", type=int, help="Dynamic batching up to this many requests (1: none).")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe TOML (default: the run's).")
@click.option(
    "--set", "overrides", multiple=True, metavar="serve.KEY=VALUE", help="A [serve] option."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON line last.")
def serve_bench_cmd(
    run_dir, p99_ms, scenarios, targets, qps, duration_s, max_batch, recipe, overrides, as_json
):
    """Requests per second each compiled model serves at a p99 latency bound, and its Offline
    throughput, driven by MLCommons' LoadGen (MLPerf's Server and Offline scenarios)."""
    from kdexport.context import Run
    from kdexport.pipeline import load_recipe
    from kdexport.report import report
    from kdexport.serve import serve

    given = {"p99_ms": p99_ms, "qps": qps, "duration_s": duration_s, "max_batch": max_batch}
    extra = [f"serve.{k}={json.dumps(v)}" for k, v in given.items() if v is not None]
    extra += [f"serve.scenarios={json.dumps(list(scenarios))}"] if scenarios else []
    extra += [f"serve.targets={json.dumps(list(targets))}"] if targets else []
    own = os.path.join(run_dir, "recipe.toml")
    r = load_recipe(recipe or (own if os.path.isfile(own) else None), (*overrides, *extra))
    run = Run(run_dir, r["data"])
    with _progress() as progress:
        run.progress = progress
        checks = serve(run, **r["serve"]).checks
    for line in _capacity_lines(checks):
        click.echo(line)
    report(run)
    click.echo(f"report: {os.path.join(run_dir, 'report.md')} (section Capacity)")
    if as_json:
        click.echo(json.dumps(checks, sort_keys=True))


def _capacity_lines(checks: dict) -> list[str]:
    from kdexport.report import capacity_rows

    return [", ".join(row) for row in capacity_rows(checks)]


@cli.command("report")
@_run_arg
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON line last.")
def report_cmd(run_dir, as_json):
    """Write report.md and manifest.json from the stages' results."""
    from kdexport.context import Run
    from kdexport.report import report

    figs = report(Run(run_dir))
    _print_table(figs)
    if as_json:
        click.echo(json.dumps(figs, sort_keys=True))


@cli.command("package")
@click.argument("source", default=DEFAULT_RUN, type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Archive to write (.tar.gz).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Or a folder.")
@click.option(
    "--target", "targets", multiple=True, help="Add this target's compiled form (repeatable)."
)
@click.option("--with-teacher", is_flag=True, help="Add the teacher, for speed-ups on devices.")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False),
    help="A `kdexport plan` plan.json of this run: add every variant it chose and the plan, so "
    "run.py runs each device's own.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="For a .onnx SOURCE with symbolic dims: the golden input's shape, as for benchmark "
    "(e.g. 1,3,224,224, or NAME=DIMS per input).",
)
def package_cmd(source, out, directory, targets, with_teacher, plan_file, shapes):
    """Bundle a run's student, or any ONNX file, for devices that have only onnxruntime and
    numpy.

    The bundle holds the portable ONNX model, a golden input and output, manifest.json and
    run.py (`python run.py verify|predict|bench`). It is verified before it is written. An
    ONNX file's golden input is random (as `kdexport benchmark` makes it) and its golden
    output ONNX Runtime's CPU reference run.
    """
    from kdexport.package import package

    if (out is None) == (directory is None):
        raise click.UsageError("give exactly one of -o BUNDLE.kdx.tar.gz or --dir FOLDER")
    r = package(
        source,
        out,
        directory,
        targets=list(targets),
        with_teacher=with_teacher,
        shapes=shapes,
        plan=plan_file,
    )
    click.echo(f"bundle: {r['path']}  {r['bytes']:,} bytes  {r['files']} files  ({r['name']})")
    click.echo(f"bundle id (sha256 of manifest.json): {r['id']}")


@cli.command("verify")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line last.")
def verify_cmd(bundle, as_json):
    """Check a bundle (archive or folder): every file's sha256, then the golden outputs."""
    from kdexport.bundle.archive import verify
    from kdexport.bundle.runner import golden_line

    r = verify(bundle)
    click.echo(f"{bundle}: {r['files']} files match their sha256")
    for name, g in r["golden"].items():
        click.echo(golden_line(name, g))
    for target, why in r["skipped"].items():
        click.echo(f"{target}: {why}")
    click.echo(f"bundle id (sha256 of manifest.json): {r['id']}")
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))


@cli.command("import-results")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Also write a Markdown table.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as one JSON line last.")
def import_results_cmd(results, out, as_json):
    """Merge `python run.py bench` results from devices into one fleet table."""
    from rich.table import Table

    from kdexport.bundle.fleet import FLEET_HEADER, fleet_cells, import_results

    fleet = import_results(list(results), out)
    table = Table(*FLEET_HEADER, title=f"kdexport fleet: {fleet['devices']} devices")
    for row in fleet_cells(fleet):
        table.add_row(*row)
    _console().print(table)
    if out:
        click.echo(f"fleet table: {out}")
    if as_json:
        click.echo(json.dumps(fleet, sort_keys=True))


@cli.command("plan")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("results", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--budget-ms", type=float, help="p90 latency budget per device (ms).")
@click.option(
    "--batch",
    help="Batch size to plan for (default 1); a text run: a shape it was measured at, "
    "BATCHxTOKENS (default its report's, e.g. 1x128).",
)
@click.option("--max-mb", type=float, help="Peak memory limit (MB), where memory was measured.")
@click.option("--min-accuracy", type=float, help="Refuse variants below this accuracy (0..1).")
@click.option(
    "--budgets",
    type=click.Path(dir_okay=False),
    help="TOML: [DEVICE or fingerprint] budget_ms = …, max_mb = … (overrides the flags).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False),
    help="Markdown table; plan.json and plan.png are written beside it (default: RUN/plan/plan.md, "
    "and the run's report gets a Placement section).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON line last.")
def plan_cmd(run, results, budget_ms, batch, max_mb, min_accuracy, budgets, out, as_json):
    """For each measured device (this machine's benchmark of RUN, and `run.py bench` RESULTS),
    the most accurate variant whose p90 meets its budget."""
    from rich.table import Table

    from kdexport.plan import HEADER, batch_label, plan, plan_cells

    into_run = out is None
    out = out or os.path.join(run, "plan", "plan.md")
    result = plan(
        run,
        results,
        budget_ms=budget_ms,
        batch=batch,
        max_mb=max_mb,
        min_accuracy=min_accuracy,
        budgets=budgets,
        out=out,
    )
    table = Table(*HEADER, title=f"kdexport plan: {batch_label(result['batch'])}")
    for row in plan_cells(result):
        table.add_row(*row)
    _console().print(table)
    click.echo(f"plan: {out} (and {os.path.splitext(out)[0]}.json, .png)")
    if into_run:
        from kdexport.context import Run
        from kdexport.report import report

        report(Run(run))
        click.echo(f"report: {os.path.join(run, 'report.md')} (section Placement)")
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))


@cli.command("compare")
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option(
    "--allow-different-settings",
    is_flag=True,
    help="Compare runs benchmarked with other thread or CPU settings (with a warning).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON line last.")
def compare_cmd(run_a, run_b, allow_different_settings, as_json):
    """Show two complete runs side by side (e.g. the same recipe on two machines), and whether
    each figure differs beyond the two runs' measured spread."""
    from rich.table import Table

    from kdexport.compare import compare_runs

    result = compare_runs(run_a, run_b, allow_different_settings)
    for line in result["warnings"]:
        click.echo(f"warning: {line}", err=True)
    table = Table(*result["header"], title=f"A = {run_a}   B = {run_b}")
    for row in result["rows"]:
        table.add_row(*row)
    console = _console()
    console.print(table)
    for key, machine in result["machines"].items():
        console.print(f"{key}: {machine}")
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))


@cli.command("status")
@_run_arg
def status_cmd(run_dir):
    """Say which stages of RUN_DIR completed, were interrupted, or must run again."""
    from kdexport.status import run_status

    for stage, st in run_status(run_dir).items():
        click.echo(f"{stage:<10} {st['state']:<12} {st['detail']}")


@cli.command("targets")
def targets_cmd():
    """List the targets; say which are available here, and why not."""
    from kdexport.backends.profiles import builtin_names, load_target

    names = builtin_names()
    width = max(map(len, names))
    for name in names:
        target = load_target(name)
        reason = target.unavailable_reason()
        status = "available" if reason is None else f"unavailable: {reason}"
        click.echo(f"{name:<{width}} {target.description}\n{'':<{width}} {status}")


def main() -> None:
    cli(prog_name="kdexport")


if __name__ == "__main__":
    sys.exit(main())
