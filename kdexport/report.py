"""The run's figures: gathered from the stage manifests into one JSON object, a Markdown table
(report.md) and the run-level manifest.json, which is written last and so marks a complete run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kdexport import __version__, family, modalities
from kdexport.artifact import FORMAT_VERSION, MANIFEST, Artifact, file_table, write_json, write_text
from kdexport.bundle.runner import parse_point, point_label
from kdexport.bundle.runner import point_order as shape_order
from kdexport.chart import chart, family_chart
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.markdown import markdown_table
from kdexport.options import read_toml
from kdexport.rundir import MODELS, STAGES, open_stage, student_bundle

if TYPE_CHECKING:  # what the stages wrote, read from their manifests (their modules load torch)
    from kdexport.baseline import BaselineChecks
    from kdexport.benchmark import BenchmarkChecks, ModelTimings
    from kdexport.compile import CompileChecks, CompiledModel
    from kdexport.distill import StudentChecks
    from kdexport.export import ExportChecks, ModelFacts
    from kdexport.teacher import TeacherChecks

_FLAGS = ("reason", "accuracy_drop_points", "latency_ratio", "fp32_accuracy", "cpu_fallback_nodes")


def headline(latency: dict) -> str:
    """The latency key the report's table shows: the smallest batch, and for text the longest
    sequence at it ("1", "1x128")."""
    return min(latency, key=lambda k: (shape_order(k)[0], [-v for v in shape_order(k)[1:]]))


def _model_figures(
    exported: ModelFacts, compiled: CompiledModel, benched: ModelTimings | None
) -> dict:
    """One model on one target; an INT8 model that failed its gate has no latency."""
    figs = {
        "shipped": compiled["shipped"],
        "accuracy": compiled["accuracy"],
        "max_abs_diff": compiled["parity"]["max_abs_diff"],
        "top1_agreement": compiled["parity"]["top1_agreement"],
        "params": exported["params"],
        "flops": exported["flops"],
        **{k: compiled[k] for k in _FLAGS if k in compiled},
    }
    if benched is None:
        return figs
    batch1 = benched["latency"][headline(benched["latency"])]
    return {
        **figs,
        "p50_ms": batch1["p50_ms"],
        "p90_ms": batch1["p90_ms"],
        "p50_ci95_ms": batch1.get("p50_ci95_ms"),
        "round_medians_ms": batch1.get("round_medians_ms"),
        "unstable": batch1.get("unstable", False),
        "unstable_reasons": batch1.get("unstable_reasons", []),
        "size_bytes": compiled["size_bytes"],
        "latency": benched["latency"],
        "cold_start": benched["cold_start"],
        "runtime": benched["runtime"],
        **({"memory": benched["memory"]} if "memory" in benched else {}),
    }


def figures(run_dir: str | Path) -> dict:
    """Every figure of a run, from its stage manifests (all must be complete and current)."""
    run_dir = Path(run_dir)
    arts = {stage: open_stage(run_dir, stage) for stage in STAGES}
    exp: ExportChecks = arts["export"].checks
    comp: CompileChecks = arts["compile"].checks
    bench: BenchmarkChecks = arts["benchmark"].checks
    teacher: TeacherChecks = arts["teacher"].checks
    student: StudentChecks = arts["student"].checks
    targets = {}
    for name, result in comp["targets"].items():
        b = bench["targets"].get(name, {})
        entry = {m: _model_figures(exp[m], result[m], b.get(m)) for m in MODELS}
        by_batch = b.get("speedup", {})  # teacher p50 / student p50, from benchmark
        entry["speedup"] = by_batch[headline(by_batch)] if by_batch else None
        entry["speedup_by_batch"] = by_batch
        detail = b.get("speedup_detail", {})  # median of per-round ratios, IQR, unstable
        entry["speedup_detail"] = detail[headline(detail)] if detail else None
        targets[name] = entry
    return {
        "run_dir": str(run_dir),
        "modality": exp.get("modality", modalities.DEFAULT),
        "targets": targets,
        "skipped_targets": comp["skipped"],
        "torch": {m: {"accuracy": exp[m]["torch_accuracy"]} for m in MODELS},
        "training": {"teacher": teacher, "student": student},
        "distillation": distillation_summary(run_dir, arts["student"]),
        "exporters": {m: exp[m]["exporter"] for m in MODELS},
        "ideal_speedup": exp["teacher"]["flops"] / exp["student"]["flops"]
        if exp["teacher"]["flops"]
        else None,
        "benchmark_method": bench["method"],
        "environment": bench["environment"],
        "benchmark_settings": bench.get("settings"),
    }


def speedup_cell(speedup: float | None, detail: dict | None) -> str:
    """'3.1x (IQR 2.9-3.3)', with 'unstable' when the measurement was."""
    if not speedup:
        return ""
    if not detail:
        return f"{speedup:.1f}x"
    lo, hi = detail["iqr"]
    return f"{speedup:.2f}x ({lo:.2f}-{hi:.2f})" + (" unstable" if detail["unstable"] else "")


def _row(target: str, model: str, f: dict, speedup: str) -> list[str]:
    head = [
        target,
        model,
        f"{f['accuracy']:.2%}",
        f"{f['max_abs_diff']:.1e}",
        f"{f['top1_agreement']:.0%}",
        f"{f['params']:,}",
        f"{f['flops'] / 1e6:.2f} M" if f["flops"] else "-",
    ]
    if not f["shipped"]:
        return [*head, "-", "-", "-", "-", "not shipped"]
    big = max(f["latency"], key=shape_order)
    return [
        *head,
        f"{f['size_bytes'] / 1024:.0f} KiB",
        f"{f['p50_ms']:.3f}",
        f"{f['p90_ms']:.3f}",
        f"{f['latency'][big]['throughput_per_s']:,.0f}",
        speedup if model == "student" else "",
    ]


def detail_rows(figs: dict) -> list[list[str]]:
    """Latency detail: per target, model and batch size."""
    out = []
    for target, entry in figs["targets"].items():
        for m in MODELS:
            f = entry[m]
            for size, st in f.get("latency", {}).items():
                lo, hi = st["p50_ci95_ms"]
                mem = f.get("memory", {}).get("peak_rss_mb")
                out.append(
                    [
                        target,
                        m,
                        size,
                        f"{st['p50_ms']:.4f}",
                        f"{lo:.4f}-{hi:.4f}",
                        f"{st['p90_ms']:.4f}",
                        f"{st['p99_ms']:.4f}",
                        f"{st.get('round_spread', st['repeat_cv']):.1%}"
                        + (" unstable" if st["unstable"] else ""),
                        f"{st['end_to_end']['p50_ms']:.4f}",
                        f"{f['cold_start']['load_s'] * 1000:.1f}",
                        f"{mem:.0f}" if mem else "-",
                    ]
                )
    return out


DETAIL_HEADER = [
    "target",
    "model",
    "batch",
    "p50 ms",
    "p50 95% CI",
    "p90 ms",
    "p99 ms",
    "round spread (IQR/median)",
    "end-to-end p50 ms",
    "load ms",
    "peak RSS MB",
]


def rows(figs: dict) -> list[list[str]]:
    """The report table: one row per target and model."""
    return [
        _row(t, m, e[m], speedup_cell(e["speedup"], e.get("speedup_detail")))
        for t, e in figs["targets"].items()
        for m in MODELS
    ]


def notes(figs: dict) -> list[str]:
    """One line per INT8 gate decision and per skipped target."""
    out = []
    for target, entry in figs["targets"].items():
        for m in MODELS:
            f = entry[m]
            if f.get("cpu_fallback_nodes"):
                out.append(
                    f"{target}/{m}: {f['cpu_fallback_nodes']} nodes ran on the CPU, not the GPU"
                )
            if "latency_ratio" in f:
                verdict = "shipped" if f["shipped"] else "not shipped"
                out.append(
                    f"{target}/{m}: {verdict}, {f['reason']} (accuracy drop {f['accuracy_drop_points']:.2f} "
                    f"points, int8/fp32 p50 {f['latency_ratio']:.2f})"
                )
        for m in MODELS:
            if entry[m].get("unstable_reasons"):
                why = "; ".join(entry[m]["unstable_reasons"])
                out.append(f"{target}/{m}: latency unstable: {why}")
        if (d := entry.get("speedup_detail")) and d["unstable"]:
            out.append(f"{target}: speed-up unstable: {'; '.join(d['unstable_reasons'])}")
    out += [f"skipped {name}: {reason}" for name, reason in figs["skipped_targets"].items()]
    return out


def shown(figs: dict) -> str:
    """The latency key the table's columns show (``headline``): "1", "8", or "1x128"."""
    return headline(next(iter(figs["targets"].values()))["student"].get("latency") or {"1": 0})


def header(figs: dict) -> list[str]:
    """The report table's columns; the latency ones name the batch or text shape they show."""
    key = shown(figs)
    at = key if len(parse_point(key)) > 1 else f"b={key}"
    return [
        *("target", "model", "accuracy", "max abs diff", "top-1 agree", "params", "FLOPs"),
        *("size", f"p50 ms ({at})", f"p90 ms ({at})", "samples/s (largest batch)"),
        "speed-up (IQR)",
    ]


def markdown(figs: dict) -> str:
    lines = [
        f"# kdexport run: {figs['run_dir']}",
        "",
        "Accuracy on the test split and parity against PyTorch, measured on each compiled "
        "model; latency of the compiled models on this machine.",
        "",
        *markdown_table(header(figs), rows(figs)),
    ]
    if len(parse_point(at := shown(figs))) > 1:
        lines += [
            "",
            f"A text model: latency columns at shape {at} (batch x tokens; the smallest batch "
            "of benchmark.text_shapes at its longest sequence); every shape, with tokens per "
            "second, is in the detail below.",
        ]
    lines += ["", *(f"- {line}" for line in notes(figs))]
    lines += [
        "",
        f"Ideal speed-up from FLOPs (teacher / student): {figs['ideal_speedup']:.1f}x; "
        "the measured speed-ups above are lower where fixed per-inference costs dominate."
        if figs["ideal_speedup"]
        else "Ideal speed-up: unknown (an ONNX teacher has no torch graph to count FLOPs on).",
        "",
        "![latency per target](report.png)",
        "",
        "## Latency detail",
        "",
        *markdown_table(DETAIL_HEADER, detail_rows(figs)),
    ]
    t, s = figs["torch"]["teacher"]["accuracy"], figs["torch"]["student"]["accuracy"]
    env = figs["environment"]
    lines += [
        "",
        f"PyTorch test accuracy: teacher {t:.2%}, student {s:.2%} ({(s - t) * 100:+.1f} points).",
        *_time_line(figs["training"]["student"].get("time_shares")),
        *cut_line(figs),
        f"Machine: {env['cpu']}, {env['logical_cores']} logical cores; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ".",
        f"Latency method: {figs['benchmark_method']}.",
        *_settings_line(figs.get("benchmark_settings")),
        "",
    ]
    lines += distillation_markdown(figs["distillation"], figs["run_dir"])
    lines += family_markdown(figs)
    lines += placement_markdown(figs["run_dir"])
    lines += capacity_markdown(figs["run_dir"])
    return "\n".join(lines)


def _time_line(shares: dict | None) -> list[str]:
    """Where the student's training time went (``train.loop.TrainedModel.time_shares``)."""
    if not shares:
        return []
    return [
        f"Distillation time: {shares['teacher']:.0%} running the teacher (on each augmented "
        f"batch; 0% with its outputs cached), {shares['wait']:.0%} waiting for data."
    ]


FAMILY_HEADER = [
    "#",
    "model",
    "spec",
    "accuracy",
    "params",
    "FLOPs / teacher's",
    "p50 ms",
    "speed-up",
]


def family_points(figs: dict) -> dict[str, list[dict]]:
    """Per target, every model of the run and its family (``kdexport.family``): the teacher,
    the run's student, each member's student; accuracy of the compiled model, its p50 at the
    report's measuring point, its FLOPs (torch's counter, as the export records them) against
    the teacher's (measured each in its own run)."""
    runs = {"student": figs, **{m: figures(p) for m, p in family.members(figs["run_dir"]).items()}}
    teacher_flops = figs["targets"] and next(iter(figs["targets"].values()))["teacher"]["flops"]
    teacher = open_stage(figs["run_dir"], "teacher").parameters["model"]
    out: dict[str, list[dict]] = {}
    for target, entry in figs["targets"].items():
        points = [{"name": "teacher", "spec": teacher, **_point(entry["teacher"], teacher_flops)}]
        points[0]["speedup"] = 1.0
        for name, f in runs.items():
            e = f["targets"].get(target)
            if e is None or "p50_ms" not in e["student"]:
                continue
            spec = open_stage(f["run_dir"], "student").parameters["student"]
            p = {"name": name, "spec": spec, **_point(e["student"], teacher_flops)}
            p["speedup"] = e["speedup"]  # against the teacher timed beside it, in its run
            points.append(p)
        out[target] = points
    return out


def _point(f: dict, teacher_flops) -> dict:
    flops = f.get("flops")
    ratio = flops / teacher_flops if flops and teacher_flops else None
    return {"accuracy": f["accuracy"], "p50_ms": f["p50_ms"], "params": f["params"],
            "flops_ratio": ratio}  # fmt: skip


def family_markdown(figs: dict) -> list[str]:
    """The family's section: per target a table (numbered as the chart's points) and the
    accuracy-latency chart with its Pareto front."""
    if not family.members(figs["run_dir"]):
        return []
    points = family_points(figs)
    lines = ["## The family of students", "",
             f"Each member is a run of its own in `{family.FOLDER}/NAME`, sharing this run's "
             "teacher; accuracy of each compiled model on the test split; p50 at "
             f"{point_label(shown(figs))}, each in its own run's benchmark stage, and the "
             "speed-up against the teacher timed beside it there, rounds interleaved (the "
             "teacher's p50 is this run's: runs timed apart differ by the machine's load, the "
             "paired speed-up does not).", ""]  # fmt: skip
    for target, pts in points.items():
        rows = [[str(i), p["name"], p["spec"], f"{p['accuracy']:.2%}", f"{p['params']:,}",
                 "-" if p["flops_ratio"] is None else f"{p['flops_ratio']:.3f}",
                 f"{p['p50_ms']:.3f}", f"{p['speedup']:.2f}x" if p["speedup"] else "-"]
                for i, p in enumerate(pts)]  # fmt: skip
        lines += [f"### {target}", "", *markdown_table(FAMILY_HEADER, rows), ""]
    return [*lines, "![accuracy vs latency of the family per target](family.png)", ""]


def cut_line(figs: dict) -> list[str]:
    """For a student cut from the teacher (``prune:``): what was cut, its MACs and parameters
    beside the speed-up measured per target (MACs are not latency)."""
    init = figs["training"]["student"].get("init") or {}
    if "macs_ratio" not in init:
        return []
    speedups = ", ".join(
        f"{t} {e['speedup']:.2f}x" for t, e in figs["targets"].items() if e.get("speedup")
    )
    return [
        f"Student cut from the teacher ({init['removed']} removed; "
        f"{init['criterion']}): MACs {init['macs_ratio']:.3f} of the teacher's "
        f"({1 / init['macs_ratio']:.2f}x fewer), parameters {init['params_ratio']:.3f}; "
        f"measured speed-up {speedups or 'not measured'}."
    ]


def placement_markdown(run_dir: str | Path) -> list[str]:
    """The report's section on placement: RUN/plan/ as ``kdexport plan`` wrote it, when it was
    planned for this run's student."""
    folder = Path(run_dir) / "plan"
    if not (folder / "plan.json").is_file():
        return []
    plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    student = student_bundle(open_stage(run_dir, "export"))
    lines = ["", "## Placement", ""]
    if plan.get("student") != student:
        return [
            *lines,
            f"The plan in `plan/` is for {plan.get('student')}, not this run's "
            f"{student}; plan again with `kdexport plan {run_dir} ...`.",
            "",
        ]
    table = (folder / "plan.md").read_text(encoding="utf-8").splitlines()
    body = "\n".join(line for line in table if not line.startswith("# ")).strip().splitlines()
    return [*lines, *body, "", "![p90 latency vs accuracy per device](plan/plan.png)", ""]


CAPACITY_HEADER = ["target", "model", "req/s at p99", "p50 ms", "p90 ms", "p99 ms",
                   "Offline samples/s", "served by"]  # fmt: skip


def capacity_rows(checks: dict) -> list[list[str]]:
    """A row per target and model of ``kdexport serve-bench``'s figures (RUN/serve)."""
    out = []
    for name, t in checks["targets"].items():
        for m in MODELS:
            if f := t.get(m):
                qps = f.get("qps_at_p99")
                served = "-" if qps is None else f"{qps:,.0f}" if qps else "none"
                ms = [f"{f[k]:.3g}" if k in f else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
                out.append([name, m, served, *ms, f"{f['offline_sps']:,.0f}", f["setting"]])
    return out


def capacity_markdown(run_dir: str | Path) -> list[str]:
    """The report's section on serving: RUN/serve as ``kdexport serve-bench`` wrote it, when it
    measured this run's compiled models."""
    if not (Path(run_dir) / "serve" / MANIFEST).is_file():
        return []
    lines = ["", "## Capacity", ""]
    try:
        checks = open_stage(run_dir, "serve").checks
    except KdxError as e:
        return [*lines, f"The figures in `serve/` are not this run's: {e}.", ""]
    lines += [
        f"Requests per second each model serves with its p99 latency at most "
        f"{checks['p99_ms']:g} ms (LoadGen's Server scenario; one request: {checks['point']}; "
        f"{checks['cores']} cores), the latency percentiles at that rate, and its Offline "
        "throughput; each with the serving setting that did best.",
        "",
        *markdown_table(CAPACITY_HEADER, capacity_rows(checks)),
        "",
    ]
    for name, t in checks["targets"].items():
        if "offline_ratio" not in t:
            continue
        parts = [f"Offline {t['offline_ratio']:.2f}x"]
        if t.get("capacity_ratio"):
            parts.insert(0, f"capacity at the bound {t['capacity_ratio']:.2f}x")
        if t.get("single_stream_speedup"):
            parts.append(f"single-stream speed-up {t['single_stream_speedup']:.2f}x")
        lines.append(f"- {name}, student over teacher: {', '.join(parts)}.")
    if checks["qps"]:
        needed = [
            f"{name} {m} {t[m]['servers_for_qps']}"
            for name, t in checks["targets"].items()
            for m in MODELS
            if "servers_for_qps" in t.get(m, {})
        ]
        lines.append(
            f"- Servers like this one for {checks['qps']:,.0f} req/s: {', '.join(needed)}."
        )
    return [*lines, "", f"Method: {checks['method']}.", "",
            "![requests per second at the p99 bound per target](serve/capacity.png)", ""]  # fmt: skip


def _settings_line(st: dict | None) -> list[str]:
    if not st:
        return []
    pinned = f"pinned to CPUs {st['cpus']}" if st.get("pinned") else "not pinned"
    return [f"Settings: {st['threads']} intra-op threads, {pinned}."]


def report(run: Run, wall_s: float | None = None) -> dict:
    """Write RUN/report.md and RUN/manifest.json (last); return the figures."""
    run_dir = run.path
    figs = figures(run_dir)
    if wall_s is not None:
        figs["wall_s"] = wall_s
    chart(figs, run_dir / "report.png")
    if family.members(run_dir):
        family_chart(family_points(figs), shown(figs), run_dir / "family.png")
    else:
        (run_dir / "family.png").unlink(missing_ok=True)
    write_text(run_dir / "report.md", markdown(figs))
    write_json(
        run_dir / MANIFEST,
        {
            "format_version": FORMAT_VERSION,
            "kind": "run",
            "kdexport_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "modality": figs["modality"],
            "recipe": read_toml(recipe) if (recipe := run_dir / "recipe.toml").is_file() else None,
            "figures": figs,
            "files": file_table(run_dir),
        },
    )
    return figs


def distillation_summary(run_dir: str | Path, student: Artifact) -> dict:
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
    checks: BaselineChecks = art.checks
    return {"status": "current", **checks}


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


def distillation_markdown(b: dict, run_dir: str | Path) -> list[str]:
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
