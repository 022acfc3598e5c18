"""Students cut from the teacher, measured (issue 23): a family of pruned students on a recipe,
cuts to three latency budgets, and a family plan for three devices.

    .venv/bin/python tools/bench_prune.py [--recipe digits] [--out DIR] [--seeds 3]
        [--student prune:0.3] [--members '["prune:0.5", ...]'] [--set KEY=VALUE ...]

1. ``kdexport distill-and-export --recipe R --baseline --seeds N``, the run's student
   ``prune:0.3`` and ``[family] students`` (``prune:0.5``, ``prune:0.7``, ``prune:macs=0.05``,
   ``prune:macs=0.02``, ``prune:macs=0.01``; a hand-written student such as digits-cnn-small
   is left out: it is the fastest and the most accurate on digits, so every device would get
   it): every member distilled from the unpruned teacher, exported, compiled (ort-cpu,
   openvino-cpu), benchmarked, and compared with the same architecture trained from scratch
   over N seeds. Per member: MAC and
   parameter ratios (counted by Torch-Pruning) beside the speed-up measured in its run's
   benchmark stage (teacher and member interleaved), test accuracy of the compiled member.
2. Three budgets on ort-cpu between the teacher's p50 and the smallest member's p90, each a run
   of ``prune:budget_ms=B@ort-cpu`` (the teacher's files linked in); each chosen cut is
   bundled and re-measured by the bundle's ``run.py bench``; the step trace must fall in MACs.
3. The family planned for three devices (``local``: the benchmark stages; two stand-ins timed
   by every member bundle's ``run.py bench``: one pinned CPU and one thread, both CPUs and two
   threads), each device given a budget that admits a member of its Pareto front no device
   before it got; each choice checked by brute force over the measured variants.

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's kdexport

from bench_plan import BENCH, DEVICES, runpy

from kdexport.plan import LOCAL, NOISE, plan

STUDENT = "prune:0.3"  # the run's own student; the family adds the members
MEMBERS = ["prune:0.5", "prune:0.7", "prune:macs=0.05", "prune:macs=0.02", "prune:macs=0.01"]
TARGETS = ["ort-cpu", "openvino-cpu"]


def kdx(*args) -> None:
    cmd = [sys.executable, "-m", "kdexport.cli", *map(str, args)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def checks(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["checks"]


def member_figures(run: Path) -> dict:
    """A member run's figures: its cut, speed-ups, compiled accuracy, scratch baseline."""
    student, bench = checks(run, "student"), checks(run, "benchmark")["targets"]
    compiled = checks(run, "compile")["targets"]
    init = student.get("init", {})
    return {
        "spec": json.loads((run / "student" / "manifest.json").read_text())["parameters"][
            "student"
        ],
        "macs_ratio": init.get("macs_ratio"),
        "params_ratio": init.get("params_ratio"),
        "speedup": {t: bench[t]["speedup"]["1"] for t in TARGETS if t in bench},
        "accuracy": compiled["ort-cpu"]["student"]["accuracy"],
        "scratch_accuracy": checks(run, "baseline")["scratch"]["values"],
        "kd_accuracy_seeds": checks(run, "baseline")["kd"]["values"],
        "p90_ms_ort_cpu": bench["ort-cpu"]["student"]["latency"]["1"]["p90_ms"],
    }


def budget_cut(run: Path, work: Path, budget: float) -> dict:
    """A run cutting the teacher to ``budget`` on ort-cpu; its cut re-measured by its bundle."""
    out = work / f"budget-{budget}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    shutil.copytree(run / "teacher", out / "teacher", copy_function=shutil.copy2)
    sets = [f"distill.student=prune:budget_ms={budget}@ort-cpu", "family.students=[]",
            'compile.targets=["ort-cpu"]']  # fmt: skip
    kdx("distill-and-export", "--out", out, "--recipe", run / "recipe.toml",
        *(a for s in sets for a in ("--set", s)))  # fmt: skip
    pruned = checks(out, "prune")
    bundle = work / f"bundle-budget-{budget}"
    shutil.rmtree(bundle, ignore_errors=True)
    kdx("package", out, "--dir", bundle, "--target", "ort-cpu")
    result = work / f"remeasured-{budget}.json"
    runpy(bundle, "bench", "--target", "ort-cpu", "--out", result, *BENCH)
    lat = json.loads(result.read_text())["results"]["student"]["latency"]["1"]
    macs = [r["macs"] for r in pruned["trace"]]
    return {
        "target": "ort-cpu",
        "budget_ms": budget,
        "p90_ms_search": pruned["chosen"]["p90_ms"],
        "p90_bound_ms_search": pruned["chosen"]["p90_bound_ms"],
        "p90_ms_confirmed": pruned["chosen"].get("confirm_p90_ms"),
        "p90_ms_remeasured": lat["p90_ms"],
        "met": lat["p90_ms"] <= budget,
        "steps": pruned["steps"],
        "macs_monotone": all(a > b for a, b in zip(macs, macs[1:], strict=False)),
        "macs_ratio": macs[-1] / macs[0],
        "accuracy": checks(out, "compile")["targets"]["ort-cpu"]["student"]["accuracy"],
    }


def device_results(run: Path, work: Path) -> list[Path]:
    """``run.py bench --all-variants`` of every member's bundle (and the run's) per stand-in."""
    out = []
    runs = {"run": run, **{p.name: p for p in sorted((run / "family").iterdir())}}
    for name, path in runs.items():
        bundle = work / f"bundle-{name}"
        shutil.rmtree(bundle, ignore_errors=True)
        kdx("package", path, "--dir", bundle, "--target", "ort-cpu",
            *(["--with-teacher"] if name == "run" else []))  # fmt: skip
        for device, flags in DEVICES.items():
            res = work / f"{device}-{name}.json"
            runpy(
                bundle, "bench", "--all-variants", "--device", device, "--out", res, *flags, *BENCH
            )
            out += sorted(work.glob(f"{device}-{name}*.json"))
    return out


def variants(p: dict, device: str) -> list[dict]:
    d = p["devices"][device]
    return [v for v in [d["choice"], *d["rejected"]] if v]


def front(p: dict, device: str) -> list[dict]:
    """A device's Pareto front of students: fastest first, each more accurate than the last."""
    out, best = [], -1.0
    for v in sorted(variants(p, device), key=lambda v: v["p90_bound_ms"]):
        if v["model"] == "student" and v["accuracy"] is not None and v["accuracy"] > best:
            out.append(v)
            best = v["accuracy"]
    return out


def budgets_per_device(p: dict) -> dict[str, float]:
    """Per device (by name) a budget just above the p90 bound of the fastest member of its
    Pareto front that no device before it got (below the next point of its front, so that the
    most accurate variant that fits is that member): each device admits a different member
    where the fronts allow it."""
    out, taken = {}, set()
    for device in sorted(p["devices"]):
        points = front(p, device)
        pick = next((v for v in points if v["member"] not in taken), points[-1])
        taken.add(pick["member"])
        nxt = [v["p90_bound_ms"] for v in points if v["p90_bound_ms"] > pick["p90_bound_ms"]]
        out[device] = round(
            min(
                [pick["p90_bound_ms"] * 1.05, *(0.5 * (pick["p90_bound_ms"] + n) for n in nxt[:1])]
            ),
            5,
        )
    return out


def brute_force(p: dict, device: str) -> bool:
    """The choice is among the most accurate variants that fit, and no equally accurate one
    is faster beyond noise."""
    d = p["devices"][device]
    fits = [v for v in variants(p, device) if v["accuracy"] is not None
            and v["p90_bound_ms"] <= d["budget_ms"]]  # fmt: skip
    if not fits:
        return d["choice"] is None
    best = max(v["accuracy"] for v in fits)
    c = d["choice"]
    if c is None or c["accuracy"] != best:
        return False
    top = [v for v in fits if v["accuracy"] == best]
    return all(
        v["p50_ms"] * (1 + max(NOISE, v["spread"] + c["spread"])) >= c["p50_ms"] for v in top
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="digits")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary folder)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--student", default=STUDENT, help=f"the run's own student (default {STUDENT})")
    ap.add_argument("--members", help=f"the family, a JSON list (default {json.dumps(MEMBERS)})")
    ap.add_argument("--set", action="append", default=[], help="a recipe override KEY=VALUE")
    args = ap.parse_args()
    work = (args.out or Path(tempfile.mkdtemp(prefix="bench_prune-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    # A cut starts from the teacher's trained weights: it is fine-tuned at the teacher's
    # learning rate (the recipe's 0.01 is for a student from scratch and wipes them out).
    family = json.loads(args.members) if args.members else MEMBERS
    sets = [f"distill.student={args.student}", f"family.students={json.dumps(family)}",
            "distill.lr=0.001",
            f"compile.targets={json.dumps(TARGETS)}",
            "benchmark.batch_sizes=[1]", *args.set]  # fmt: skip
    kdx("distill-and-export", "--recipe", args.recipe, "--out", run, "--baseline", "--seeds",
        args.seeds, *(a for s in sets for a in ("--set", s)))  # fmt: skip
    bench = checks(run, "benchmark")["targets"]
    teacher = {
        "accuracy": checks(run, "compile")["targets"]["ort-cpu"]["teacher"]["accuracy"],
        "p50_ms": {t: bench[t]["teacher"]["latency"]["1"]["p50_ms"] for t in TARGETS},
        "p90_ms_ort_cpu": bench["ort-cpu"]["teacher"]["latency"]["1"]["p90_ms"],
    }
    members = [member_figures(p) for p in [run, *sorted((run / "family").iterdir())]]
    # Between the smallest member's p90 and the teacher's p50 (its p90 swings most with load):
    # geometric steps, each needing a cut.
    lo, hi = min(m["p90_ms_ort_cpu"] for m in members), teacher["p50_ms"]["ort-cpu"]
    budgets = [round(lo * (hi / lo) ** f, 4) for f in (0.25, 0.5, 0.75)]
    cuts = [budget_cut(run, work, b) for b in budgets]

    results = device_results(run, work)
    first = plan(run, results, budget_ms=1e9)
    limits = budgets_per_device(first)
    budgets_file = work / "budgets.toml"
    budgets_file.write_text("".join(f'["{d}"]\nbudget_ms = {b}\n' for d, b in limits.items()))
    final = plan(run, results, budgets=budgets_file, out=work / "plan" / "plan.md")
    picks = {d: (v["choice"] or {}).get("member") for d, v in final["devices"].items()}
    figures = {
        "recipe": args.recipe,
        "teacher": teacher,
        "members": members,
        "budget_cuts": cuts,
        "family_plan": {
            "devices": len(final["devices"]),
            "budgets_ms": limits,
            "choices": {
                d: v["choice"]
                and f"{v['choice']['member'] or v['choice']['model']} on {v['choice']['target']}"
                for d, v in final["devices"].items()
            },  # fmt: skip
            "distinct_members": len(set(picks.values())),
            "plan_valid": all(brute_force(final, d) for d in final["devices"]),
        },
        "local_device": LOCAL,
        "run": str(run),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
