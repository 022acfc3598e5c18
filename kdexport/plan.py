"""``kdexport plan``: for each device, the model, precision and runtime that meet its budget
(issue 15).

The measurements are this machine's benchmark stage of the run (device ``local``) and any
``run.py bench`` results from devices. A variant is a model (teacher or student) on a target
(a compiled form of the run, or ``portable``: the exported ONNX file under ONNX Runtime CPU).
Per device the plan keeps the most accurate variant whose **p90** at the batch size, raised by
its measured spread between rounds, meets the budget and whose peak memory fits (when it was
measured). Among equally accurate variants the faster wins when its p50 is lower beyond noise
(``faster``), else the simpler (``simplicity``): the same graph timed twice is not re-planned by
chance. The plan never guesses a latency: an unmeasured variant is listed with the command
that would measure it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from kdexport import family
from kdexport.artifact import write_json, write_text
from kdexport.bundle import fleet
from kdexport.bundle import runner as bundle_runner
from kdexport.bundle.placement import PLAN_FORMAT, PLAN_KIND, PORTABLE
from kdexport.errors import KdxError
from kdexport.markdown import markdown_table
from kdexport.report import headline, shape_order
from kdexport.rundir import MODELS, open_stage, student_bundle

if TYPE_CHECKING:  # the stages' checks, read from their manifests: `plan` imports no torch
    from kdexport.benchmark import BenchmarkChecks
    from kdexport.compile import CompileChecks
    from kdexport.export import ExportChecks

LOCAL = "local"
HEADER = ["device", "choice", "precision", "runtime", "accuracy", "p50 ms", "p90 ms", "budget ms"]
HEADER += ["margin ms", "peak MB", "note"]
# A variant counts as faster than a simpler, equally accurate one only when its p90 is lower by
# more than this share (or than both variants' spreads together, when wider): timing.SPREAD_BOUND,
# the spread beyond which a measurement is flagged unstable.
NOISE = bundle_runner.SPREAD_BOUND
device_key = bundle_runner.device_key
batch_label = bundle_runner.point_label
parse_point = bundle_runner.parse_point


def simplicity(variant: dict) -> int:
    """Lower is simpler to deploy: the portable file, then an fp32 ONNX Runtime form, an fp32
    form of another runtime, reduced float precision, integer quantization."""
    if variant["target"] == PORTABLE:
        return 0
    if variant["precision"] == "fp32":
        return 1 if variant["backend"] == "onnxruntime" else 2
    return 3 if variant["precision"] in ("fp16", "bf16") else 4


def _settings(threads, cpus) -> dict:
    """The threads and CPUs a measurement ran with, as run.py takes them back."""
    if isinstance(cpus, list | tuple | set):
        cpus = ",".join(map(str, sorted(cpus))) or None
    return {"threads": threads or None, "cpus": cpus or None}


def run_facts(run_dir: Path) -> dict:
    """The run's compiled targets (accuracy, precision, shipped), its student hash, its
    export and benchmark stages' checks."""
    exported, compiled = open_stage(run_dir, "export"), open_stage(run_dir, "compile")
    exp: ExportChecks = exported.checks
    comp: CompileChecks = compiled.checks
    bench: BenchmarkChecks = open_stage(run_dir, "benchmark").checks
    targets = {}
    for name, entry in comp["targets"].items():
        targets[name] = {
            "precision": entry["profile"]["precision"],
            "backend": entry["profile"]["backend"],
            **{m: entry[m] for m in MODELS if m in entry},
        }
    return {
        "student": student_bundle(exported),
        "targets": targets,
        "export": exp,
        "benchmark": bench,
    }


def accuracy(facts: dict, model: str, target: str) -> tuple[float | None, str]:
    """A variant's test accuracy and where it comes from: the compiled model's; the portable
    file's is ort-cpu's (same runtime, same graph), else PyTorch's before export."""
    if target == PORTABLE:
        entry = facts["targets"].get("ort-cpu", {}).get(model, {})
        if "accuracy" in entry:
            return entry["accuracy"], "ort-cpu compiled model"
        return facts["export"].get(model, {}).get("torch_accuracy"), "PyTorch (before export)"
    entry = facts["targets"].get(target, {}).get(model, {})
    return entry.get("accuracy"), f"{target} compiled model"


def plan_batch(bench: BenchmarkChecks, batch: str | int | None) -> int | str:
    """What to plan for: a batch size (an image run; default 1) or, for a text run, a shape
    "BxS" the benchmark stage measured (default the report's headline shape, e.g. "1x128")."""
    measured = {
        k
        for e in bench["targets"].values()
        for m in MODELS
        for k in e.get(m, {}).get("latency", {})
    }
    shapes = sorted((k for k in measured if len(parse_point(k)) > 1), key=shape_order)
    given = None if batch is None else str(batch).strip()
    if shapes:
        if given is None:
            return headline(shapes)
        if given in shapes:
            return given
        raise KdxError(
            f"--batch {given}: this text run was measured at shapes {', '.join(shapes)} "
            "(BATCHxTOKENS); give one of them"
        )
    if given is None:
        return 1
    if not given.isdigit() or int(given) < 1:
        sizes = ", ".join(sorted(measured, key=shape_order))
        raise KdxError(
            f"--batch {given}: give a batch size, 1 or more (BATCHxTOKENS is for a text run); "
            f"this run was measured at batch sizes {sizes}"
        )
    return int(given)


def _local(run_dir: Path, facts: dict, batch: int | str) -> dict:
    """This machine's benchmark stage as one device's measurements."""
    bench: BenchmarkChecks = facts["benchmark"]
    env = bench.get("environment", {})
    st = bench.get("settings") or {}
    settings = _settings(st.get("threads"), st.get("cpus") if st.get("pinned") else None)
    measured = {}
    for target, entry in bench["targets"].items():
        for model in MODELS:
            lat = entry.get(model, {}).get("latency", {}).get(str(batch))
            if lat is None:
                continue
            mem = entry[model].get("memory", {}).get("peak_rss_mb")
            runtime = entry[model].get("runtime", {})
            measured[(model, target)] = {
                "p50_ms": lat["p50_ms"],
                "p90_ms": lat["p90_ms"],
                "spread": lat.get("round_spread", 0.0),
                "peak_mb": mem,
                "runtime": runtime.get("provider") or runtime.get("device") or "?",
                "settings": settings,
                "source": f"{run_dir}/benchmark",
            }
    return {"environment": env, "measured": measured, "kind": "benchmark"}


def _read_device_result(path: Path, facts: dict) -> dict:
    result = fleet.read_result(path, serving=True)
    if result.get("format_version") != bundle_runner.RESULT_FORMAT:
        raise KdxError(
            f"{path}: result format {result.get('format_version')}, this kdexport reads format "
            f"{bundle_runner.RESULT_FORMAT}; measure again with this version's run.py"
        )
    name = result["bundle"]["name"]
    if name != facts["student"]:
        raise KdxError(
            f"{path}: from bundle {name}, another run's student (this run's is "
            f"{facts['student']}); plan with the run that made that bundle"
        )
    return result


def _spread(m: dict) -> float:
    """A measurement's spread in ms: p90 - p50."""
    return max(m["p90_ms"] - m["p50_ms"], 0.0)


def _merge(old: dict, new: dict, where: str) -> dict:
    """Two measurements of one device and variant: refused when their p90s differ by more than
    their spreads (p90 - p50 each) together; else the slower is kept (the budget's safe side)."""
    if abs(old["p90_ms"] - new["p90_ms"]) > _spread(old) + _spread(new):
        raise KdxError(
            f"{where}: p90 {old['p90_ms']:.3f} ms ({old['source']}) and {new['p90_ms']:.3f} ms "
            f"({new['source']}) disagree beyond their spread; measure again and give one of them"
        )
    return old if old["p90_ms"] >= new["p90_ms"] else new


def _devices(run_dir: Path, results: list, facts: dict, batch: int | str) -> dict:
    devices = {LOCAL: _local(run_dir, facts, batch)}
    for path in map(Path, results):
        result = _read_device_result(path, facts)
        if result["device"] == LOCAL:
            raise KdxError(f"{path}: device name '{LOCAL}' is this machine's; bench with --device")
        dev = devices.setdefault(
            result["device"], {"environment": result["environment"], "measured": {}}
        )
        dev["kind"] = "run.py"
        if "serving" in result:  # requests a second at a p99 bound: for capacity goals
            dev.setdefault("serving", []).append(result)
            continue
        target = result["options"].get("target") or PORTABLE
        for model in MODELS:
            entry = result["results"].get(model)
            lat = (entry or {}).get("latency", {}).get(str(batch))
            if lat is None:
                continue
            providers = entry.get("runtime", {}).get("providers") or ["?"]
            opts = result["options"]
            m = {
                "p50_ms": lat["p50_ms"],
                "p90_ms": lat["p90_ms"],
                "spread": lat.get("round_spread", 0.0),
                "peak_mb": entry.get("memory", {}).get("peak_rss_mb"),
                "runtime": providers[0],
                "settings": _settings(opts.get("threads"), opts.get("cpus")),
                "source": str(path),
            }
            key = (model, target)
            where = f"device {result['device']}, {model} on {target}"
            dev["measured"][key] = (
                _merge(dev["measured"][key], m, where) if key in dev["measured"] else m
            )
    return devices


def read_budgets(path: str | Path | None, devices: dict) -> dict:
    """``budgets.toml`` (``kdexport.family.budget_tables``): device -> {budget_ms, max_mb} or
    a capacity goal {qps, p99_ms, max_servers}."""
    if path is None:
        return {}
    prints = {n: device_key(d["environment"]) for n, d in devices.items()}
    out: dict[str, dict] = {}
    for key, table in family.budget_tables(path).items():
        names = [n for n in devices if key in (n, prints[n])]
        if not names:
            raise KdxError(
                f"{path}: device '{key}' has no results; use one of {', '.join(sorted(devices))} "
                "(or their fingerprints)"
            )
        for n in names:
            out[n] = {**out.get(n, {}), **table}
    return out


def _positive(value, what: str) -> None:
    if value is not None and (not isinstance(value, int | float) or value <= 0):
        raise KdxError(f"{what} {value}: give a number above 0 (milliseconds or MB)")


def _variants(facts: dict) -> list[tuple[str, str]]:
    """Every variant the run can ship: each model on each compiled target, and portable."""
    out = [(m, PORTABLE) for m in MODELS]
    for t, entry in facts["targets"].items():
        out += [(m, t) for m in MODELS if entry.get(m, {}).get("shipped")]
    return out


def _fill_command(run_dir: Path, device: str, kind: str, model: str, target: str, batch):
    if kind == "benchmark" and len(parse_point(batch)) > 1:  # a point of several axes: "BxS"
        return f"kdexport benchmark {run_dir} --set \"benchmark.text_shapes=['{batch}']\""
    if kind == "benchmark":
        return f"kdexport benchmark {run_dir} --batch-sizes {batch}"
    if facts_backend(target) == "openvino":
        return None  # run.py runs ONNX Runtime only
    flags = f" --target {target}" if target != PORTABLE else ""
    pack = f"kdexport package {run_dir}{' --with-teacher' if model == 'teacher' else ''}{flags}"
    return f"{pack}; python student-*/run.py bench --device {device}{flags} --batch-sizes {batch}"


def facts_backend(target: str) -> str:
    return "openvino" if target.startswith("openvino") else "onnxruntime"


def _accuracy_why(v: dict, min_acc) -> list[str]:
    """Why a variant's accuracy rules it out (empty when it does not)."""
    if v["accuracy"] is None:
        return ["no accuracy for it in the run"]
    if min_acc is not None and v["accuracy"] < min_acc:
        return [f"accuracy {v['accuracy']:.4f} < {min_acc:g}"]
    return []


def _judge(v: dict, budget: float, max_mb, min_acc) -> list[str]:
    """Why a measured variant does not fit (empty when it does)."""
    why = _accuracy_why(v, min_acc)
    if v["p90_bound_ms"] > budget:
        spread = f" + {v['spread']:.1%} spread" if v["spread"] >= 0.0005 else ""
        why.append(f"p90 {v['p90_ms']:.3f} ms{spread} > budget {budget:g} ms")
    if max_mb is not None and v["peak_mb"] is not None and v["peak_mb"] > max_mb:
        why.append(f"peak memory {v['peak_mb']:.1f} MB > {max_mb:g} MB")
    return why


def _miss(v: dict, budget: float, max_mb) -> float:
    """How far a variant is from fitting, as a ratio (1 = at the limit)."""
    mem = v["peak_mb"] / max_mb if max_mb and v["peak_mb"] is not None else 0.0
    return max(v["p90_bound_ms"] / budget, mem)


def faster(a: dict, b: dict) -> bool:
    """``a`` is faster than ``b`` beyond noise: its p50 lower by more than ``NOISE`` (or both
    spreads together). The p50, not the p90: the budget is about the tail, but which of two
    variants is faster is about the typical inference, and tails of separate measurements
    differ by chance (the same graph timed twice: p50 within 1%, p90 up to 20% apart here)."""
    return a["p50_ms"] * (1 + max(NOISE, a["spread"] + b["spread"])) < b["p50_ms"]


def pick(fits: list[dict]) -> dict | None:
    """The most accurate of ``fits``; among equally accurate ones the simplest, unless another
    is ``faster`` beyond noise."""
    if not fits:
        return None
    best = max(v["accuracy"] for v in fits)
    tied = sorted(
        (v for v in fits if v["accuracy"] == best), key=lambda v: (simplicity(v), v["p50_ms"])
    )
    choice = tied[0]
    for v in tied[1:]:
        if faster(v, choice):
            choice = v
    return choice


def who(v: dict) -> str:
    """A variant's model: "teacher", "student", or the family member it is."""
    return v.get("member") or v["model"]


def _why_not(v: dict, choice: dict) -> str:
    c = f"{who(choice)} on {choice['target']}"
    if v["accuracy"] < choice["accuracy"]:
        return f"fits, but {c} is more accurate"
    if faster(choice, v):
        return f"fits, but {c} is as accurate and faster"
    return f"fits, but {c} is as accurate, simpler and not slower beyond noise ({NOISE:.0%})"


def measured_variants(dev: dict, facts: dict, budget: float, member: str = "") -> list[dict]:
    """Every measured variant of one run on one device, with its accuracy and its p90 raised
    by its spread; ``member``: the family member the run is ("" for the run itself)."""
    variants = []
    for (model, target), m in sorted(dev["measured"].items()):
        acc, acc_from = accuracy(facts, model, target)
        known = facts["targets"].get(target, {})
        precision = "fp32" if target == PORTABLE else known.get("precision", "?")
        v = {"model": model, "target": target, "precision": precision, "accuracy": acc}
        v.update(accuracy_from=acc_from, backend=known.get("backend", "onnxruntime"), **m)
        v["variant"] = bundle_runner.variant_name(model, target)
        v["member"] = member
        v["p90_bound_ms"] = m["p90_ms"] * (1 + m["spread"])
        v["margin_ms"] = budget - v["p90_bound_ms"]
        v["memory"] = "measured" if m["peak_mb"] is not None else "not measured"
        variants.append(v)
    return variants


def unmeasured(name: str, dev: dict, facts: dict, ctx: dict, run_dir: Path) -> list[dict]:
    """The variants of one run a device has no measurement of, with the command that measures."""
    missing = []
    for model, target in _variants(facts):
        if (model, target) in dev["measured"] or (
            dev["kind"] == "benchmark" and target == PORTABLE
        ):
            continue
        cmd = _fill_command(run_dir, name, dev["kind"], model, target, ctx["batch"])
        missing.append({"model": model, "target": target, "command": cmd})
    return missing


def decide(env: dict, variants: list[dict], missing: list[dict], limits: dict, ctx: dict) -> dict:
    """One device's choice among ``variants``, its rejected alternatives, the closest when none
    fits, and the ``missing`` (unmeasured) variants."""
    budget, max_mb = limits["budget_ms"], limits.get("max_mb")
    fits = [v for v in variants if not _judge(v, budget, max_mb, ctx["min_accuracy"])]
    choice = pick(fits)
    rejected = []
    for v in variants:
        if v is not choice:
            why = _judge(v, budget, max_mb, ctx["min_accuracy"])
            rejected.append({**v, "reason": "; ".join(why) or _why_not(v, choice)})
    closest = None
    if choice is None and variants:
        c = min(variants, key=lambda v: _miss(v, budget, max_mb))
        closest = {
            **c,
            "misses_by_ms": c["p90_bound_ms"] - budget,
            "reason": "; ".join(_judge(c, budget, max_mb, ctx["min_accuracy"])),
        }
    return {
        "fingerprint": device_key(env),
        "cpu": env.get("cpu"),
        "budget_ms": budget,
        "max_mb": max_mb,
        "min_accuracy": ctx["min_accuracy"],
        "feasible": choice is not None,
        "choice": choice,
        "closest": closest,
        "rejected": rejected,
        "unmeasured": missing,
        "memory_note": None
        if max_mb is None or all(v["peak_mb"] is not None for v in variants)
        else "peak memory not measured for some variants (results of an older run.py)",
    }


def _capacity_variant(facts: dict, member: str, model: str, target: str, f: dict, ctx) -> dict:
    """A variant with a capacity figure: ``f`` is a model's serving figures (serve-bench's or a
    device's ``run.py bench --scenario server``)."""
    acc, acc_from = accuracy(facts, model, target)
    best = next(x for x in f["settings"] if x["setting"] == f["setting"])
    opts = best["options"]
    threads = opts.get("intra_op_threads") or opts.get("inference_num_threads")
    known = facts["targets"].get(target, {})
    return {
        "model": model, "target": target, "member": member, "accuracy": acc,
        "accuracy_from": acc_from, "precision": known.get("precision", "fp32"),
        "backend": known.get("backend", "onnxruntime"),
        "variant": bundle_runner.variant_name(model, target), "runtime": f["setting"],
        "qps_at_p99": f["qps_at_p99"], "p50_ms": f.get("p50_ms"), "p90_ms": f.get("p90_ms"),
        "p99_ms": f.get("p99_ms"), "cores": ctx["cores"], "peak_mb": None,
        "settings": _settings(threads, None), "source": ctx["source"],
    }  # fmt: skip


def capacity_variants(runs: dict[str, Path], facts: dict, devices: dict, device: str, p99_ms):
    """Every variant measured at the bound ``p99_ms`` on ``device`` (this machine: ``kdexport
    serve-bench``; a device: its ``run.py bench --scenario server`` results), of the run and
    each family member (not their teachers), and the runs not measured at it there."""
    variants, missing = [], []
    for member, path in runs.items():
        if device == LOCAL:
            found = _served_here(path, p99_ms)
            command = f"kdexport serve-bench {path} --p99-ms {p99_ms:g}"
        else:
            served = devices[member].get(device, {}).get("serving", [])
            found = [(r["options"].get("target") or PORTABLE, r["serving"], r["cores"], "")
                     for r in served if r["options"]["p99_ms"] == p99_ms]  # fmt: skip
            bundle = facts[member]["student"]
            command = (f"python {bundle}/run.py bench --scenario server --p99-ms {p99_ms:g} "
                       f"--device {device}")  # fmt: skip
        if not found:
            missing.append({"model": "student", "target": "every target", "member": member,
                            "command": command})  # fmt: skip
        for target, result, cores, source in found:
            ctx = {"cores": cores, "source": source or f"{device}: run.py bench --scenario server"}
            for model in MODELS:
                if "qps_at_p99" in result.get(model, {}) and not (member and model == "teacher"):
                    variants.append(
                        _capacity_variant(facts[member], member, model, target, result[model], ctx)
                    )
    return variants, missing


def _served_here(path: Path, p99_ms: float) -> list:
    """(target, figures, cores, source) of the run's serve-bench at the bound ``p99_ms``."""
    try:
        checks = open_stage(path, "serve").checks if (path / "serve").is_dir() else None
    except KdxError:
        checks = None  # made from an older compile or benchmark: measure again
    if checks is None or checks["p99_ms"] != p99_ms:
        return []
    return [(t, r, checks["cores"], f"{path}/serve") for t, r in checks["targets"].items()]


def decide_capacity(env: dict, variants: list[dict], missing: list, limits: dict, ctx) -> dict:
    """A capacity goal's choice: of the variants that serve ``qps`` requests a second with
    their p99 under ``p99_ms`` on at most ``max_servers`` servers like this one, the one needing
    the fewest servers; then the most accurate; then the simplest."""
    goal, most = limits["qps"], limits.get("max_servers", 1)
    for v in variants:
        v["servers"] = math.ceil(goal / v["qps_at_p99"]) if v["qps_at_p99"] else None
        v["cores_needed"] = v["servers"] and v["servers"] * v["cores"]

    def why(v: dict) -> list[str]:
        out = _accuracy_why(v, ctx["min_accuracy"])
        if not v["servers"] or v["servers"] > most:
            out.append(f"serves {v['qps_at_p99']:,.0f} req/s a server at p99 <= "
                       f"{limits['p99_ms']:g} ms: {v['servers'] or 'no number of'} servers "
                       f"for {goal:,.0f}, more than {most}")  # fmt: skip
        return out

    fits = [v for v in variants if not why(v)]
    choice = min(fits, key=lambda v: (v["servers"], -v["accuracy"], simplicity(v)), default=None)
    if choice is None and variants and not missing:
        top = max(variants, key=lambda v: v["qps_at_p99"])
        raise KdxError(
            f"a goal of {goal:,.0f} req/s at p99 <= {limits['p99_ms']:g} ms on at most {most} "
            f"server(s) is above what any variant reaches: the most is {top['qps_at_p99']:,.0f} "
            f"req/s a server ({who(top)} on {top['target']}); raise max_servers or lower qps"
        )
    rejected = [{**v, "reason": "; ".join(why(v)) or f"fits, but {who(choice)} on "
                 f"{choice['target']} needs fewer servers or is more accurate"}
                for v in variants if v is not choice]  # fmt: skip
    return {
        "fingerprint": device_key(env),
        "cpu": env.get("cpu"),
        "budget_ms": None,
        "capacity": {"qps": goal, "p99_ms": limits["p99_ms"], "max_servers": most},
        "max_mb": None,
        "min_accuracy": ctx["min_accuracy"],
        "feasible": choice is not None,
        "choice": choice,
        "closest": None,
        "rejected": rejected,
        "unmeasured": missing,
        "memory_note": None,
    }


def _route(results: list, facts: dict[str, dict]) -> dict[str, list[Path]]:
    """Device results by the run (or family member) whose bundle measured them."""
    by_bundle = {f["student"]: name for name, f in facts.items()}
    routed: dict[str, list[Path]] = {name: [] for name in facts}
    for path in map(Path, results):
        name = fleet.read_result(path, serving=True).get("bundle", {}).get("name")
        routed[by_bundle.get(name, "")].append(path)  # another run's: refused by _devices
    return routed


def _plan_capacity(name: str, runs: dict, facts: dict, devices: dict, limits: dict, ctx) -> dict:
    """A device with a capacity goal, planned on what serves it there."""
    for key in ("qps", "p99_ms"):
        _positive(limits.get(key), f"{key} of '{name}'")
    if "p99_ms" not in limits:
        raise KdxError(f"[{name}] qps needs p99_ms, the latency bound it is served at")
    most = limits.get("max_servers", 1)
    if not isinstance(most, int) or most < 1:
        raise KdxError(f"max_servers of '{name}' {most}: give a whole number, 1 or more")
    variants, missing = capacity_variants(runs, facts, devices, name, limits["p99_ms"])
    env = next(d[name]["environment"] for d in devices.values() if name in d)
    return decide_capacity(env, variants, missing, limits, ctx)


def plan(
    run_dir: str | Path,
    results: list | tuple = (),
    *,
    budget_ms: float | None = None,
    batch: int | str | None = None,
    max_mb: float | None = None,
    min_accuracy: float | None = None,
    budgets: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Plan every measured device at ``batch`` (``plan_batch``) among the run's variants and,
    for a run with a family of students (``kdexport.family``), every member's; write ``out``
    (Markdown), ``.json`` and ``.png`` beside it (with ``out`` None, nothing is written)."""
    run_dir = Path(run_dir)
    _positive(budget_ms, "--budget-ms")
    _positive(max_mb, "--max-mb")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise KdxError(f"--min-accuracy {min_accuracy}: give a share of the test set, 0 to 1")
    runs = {"": run_dir, **family.members(run_dir)}
    facts = {name: run_facts(path) for name, path in runs.items()}
    batch = plan_batch(facts[""]["benchmark"], batch)
    routed = _route(list(results), facts)
    devices = {n: _devices(runs[n], routed[n], facts[n], batch) for n in runs}
    per_device = read_budgets(budgets, {k: v for d in devices.values() for k, v in d.items()})
    ctx = {"run": run_dir, "batch": batch, "min_accuracy": min_accuracy}
    planned = {}
    for name in sorted({k for d in devices.values() for k in d}):
        limits = {"budget_ms": budget_ms, "max_mb": max_mb, **per_device.get(name, {})}
        if "qps" in limits:
            planned[name] = _plan_capacity(name, runs, facts, devices, limits, ctx)
            continue
        if limits["budget_ms"] is None:
            raise KdxError(f"no budget for device '{name}': give --budget-ms or [{name}] budget_ms")
        _positive(limits["budget_ms"], f"budget_ms of '{name}'")
        _positive(limits.get("max_mb"), f"max_mb of '{name}'")
        variants, missing, env = [], [], None
        for member, dev in ((m, devices[m][name]) for m in runs if name in devices[m]):
            env = env or dev["environment"]
            found = measured_variants(dev, facts[member], limits["budget_ms"], member)
            variants += [v for v in found if not (member and v["model"] == "teacher")]
            missing += [
                {**u, "member": member}
                for u in unmeasured(name, dev, facts[member], ctx, runs[member])
                if not (member and u["model"] == "teacher")
            ]
        planned[name] = decide(env, variants, missing, limits, ctx)
    result = {
        "kind": PLAN_KIND,
        "format_version": PLAN_FORMAT,
        "run": str(run_dir),
        "student": facts[""]["student"],
        "family": {
            m: {"run": str(p), "student": facts[m]["student"]} for m, p in runs.items() if m
        },
        "batch": batch,
        "latency": "p90 at the batch size (a text run: the shape), raised by its spread between rounds; never estimated",
        "devices": planned,
    }
    if out is not None:
        out = Path(out)
        write_json(out.with_suffix(".json"), result)
        write_text(out, plan_markdown(result))
        from kdexport.chart import plan_chart

        plan_chart(result, out.with_suffix(".png"))
    return result


def plan_cells(result: dict) -> list[list[str]]:
    """One row per device: the choice, or the closest variant and why it misses."""

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    rows = []
    for name, d in result["devices"].items():
        v = d["choice"] or d["closest"] or {}
        note = "" if d["choice"] else f"nothing fits: closest {v.get('reason', 'none measured')}"
        if d["memory_note"]:
            note = f"{note}; {d['memory_note']}".strip("; ")
        rows.append(
            [
                name,
                f"{who(v)} on {v.get('target', '-')}" if v else "-",
                v.get("precision", "-"),
                v.get("runtime", "-"),
                f(v.get("accuracy"), "{:.4f}"),
                f(v.get("p50_ms")),
                f(v.get("p90_ms")),
                _limit_cell(d),
                f"{v['servers']} server(s)" if "servers" in v else f(v.get("margin_ms")),
                f(v.get("peak_mb"), "{:.1f}"),
                note,
            ]
        )
    return rows


def _limit_cell(d: dict) -> str:
    """A device's budget in ms, or its capacity goal."""
    if c := d.get("capacity"):
        return f"{c['qps']:,.0f} req/s at p99 <= {c['p99_ms']:g} ms"
    return f"{d['budget_ms']:g}"


def plan_markdown(result: dict) -> str:
    lines = [
        "# kdexport placement plan",
        "",
        f"Run {result['run']} ({result['student']}), {batch_label(result['batch'])}: per device the "
        "most accurate variant whose p90, raised by its spread between rounds, meets the "
        f"budget; among equally accurate ones the simplest unless another is faster by more "
        f"than {NOISE:.0%} (or both spreads).",
        "",
        *markdown_table(HEADER, plan_cells(result)),
        "",
    ]
    if any(d.get("capacity") for d in result["devices"].values()):
        lines += [
            "A device with a capacity goal (req/s at a p99 bound: kdexport serve-bench's "
            "figures on this machine, `run.py bench --scenario server` on a device): the variant "
            "needing the fewest servers like it, then the most accurate; p50 and p90 there are "
            "LoadGen's at the rate it serves.",
            "",
        ]
    served = {d["choice"].get("member", "") for d in result["devices"].values() if d["choice"]}
    for member in sorted(m for m in served if m):
        run = result["family"][member]["run"]
        lines.append(f"- family member {member} serves devices "
                     + ", ".join(n for n, d in result["devices"].items()
                                 if d["choice"] and d["choice"].get("member") == member)
                     + f": bundle it with `kdexport package {run} --plan PLAN.json --dir DEST`")  # fmt: skip
    for name, d in result["devices"].items():
        for r in d["rejected"]:
            lines.append(f"- {name}: {who(r)} on {r['target']}: {r['reason']}")
        for u in d["unmeasured"]:
            how = u["command"] or "not measurable by run.py (ONNX Runtime only)"
            lines.append(f"- {name}: {who(u)} on {u['target']} not measured: `{how}`")
    return "\n".join(lines) + "\n"
