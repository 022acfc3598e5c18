"""Placement plans on real measurements (issue 15): a fleet of stand-in devices on this machine.

Devices: ``local`` (the run's benchmark stage: ORT and OpenVINO, FP32 and INT8), and two
``run.py bench`` devices from the run's bundle: ``cpu0-1thread`` (pinned to CPU 0, one thread)
and ``all-2threads``. Three budgets are planned; each plan is checked against a brute-force
choice over the measured variants, and each chosen variant is measured again (``run.py bench``,
or ``kdexport benchmark`` of a copy of the run for ``local``) to see its p90 within the budget
(15% allowance) and whether planning on the new measurements picks the same variants.

    .venv/bin/python tools/bench_plan.py [--run runs/digits]   # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kdexport.plan import LOCAL, PORTABLE, accuracy, plan, run_facts

BENCH = ["--batch-sizes", "1", "--min-iters", "200", "--min-time-s", "0.3", "--rounds", "3"]
DEVICES = {"cpu0-1thread": ["--threads", "1", "--cpus", "0"], "all-2threads": ["--threads", "2"]}
FAST = ["teacher.epochs=2", "distill.epochs=2", "benchmark.batch_sizes=[1]"]
BENCH_SET = ["benchmark.min_iters=200", "benchmark.min_time_s=0.3", "benchmark.rounds=3"]
ALLOWANCE = 1.15


def kdx(*args) -> None:
    cmd = [sys.executable, "-m", "kdexport.cli", *map(str, args)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def device_results(run: Path, work: Path, tag: str) -> list[Path]:
    """``run.py bench`` of the bundle, per stand-in device and target (portable, ort-cpu)."""
    runpy = next(work.glob("bundle/**/run.py"))
    out = []
    for device, flags in DEVICES.items():
        for target in (None, "ort-cpu"):
            path = work / f"{device}-{target or PORTABLE}-{tag}.json"
            extra = ["--target", target] if target else []
            cmd = [sys.executable, runpy, "bench", "--device", device, "--out", path]
            subprocess.run(
                [*map(str, cmd), *extra, *flags, *BENCH], check=True, stdout=subprocess.DEVNULL
            )
            out.append(path)
    return out


def measured(run: Path, results: list[Path]) -> dict:
    """device -> (model, target) -> p90 at batch 1, read straight from the files."""
    bench = json.loads((run / "benchmark" / "manifest.json").read_text())["checks"]["targets"]
    table = {
        LOCAL: {
            (m, t): e[m]["latency"]["1"]["p90_ms"]
            for t, e in bench.items()
            for m in ("teacher", "student")
            if "1" in e.get(m, {}).get("latency", {})
        }
    }
    for path in results:
        r = json.loads(path.read_text())
        target = r["options"]["target"] or PORTABLE
        for m, e in r["results"].items():
            if isinstance(e, dict) and "latency" in e:
                table.setdefault(r["device"], {})[(m, target)] = e["latency"]["1"]["p90_ms"]
    return table


def brute_force(table: dict, facts: dict, budget: float) -> dict:
    """Per device: every measured variant within budget, the most accurate, then the fastest."""
    best = {}
    for device, variants in table.items():
        fits = [
            (-accuracy(facts, m, t)[0], p90, (m, t))
            for (m, t), p90 in variants.items()
            if p90 <= budget
        ]
        best[device] = min(fits)[2] if fits else None
    return best


def chosen(p: dict) -> dict:
    return {
        d: (v["choice"]["model"], v["choice"]["target"]) if v["choice"] else None
        for d, v in p["devices"].items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a complete run (default: a fresh short one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_plan-"))
    run = args.run
    if run is None:
        run = work / "run"
        kdx(
            "distill-and-export", "--out", run, *(a for s in FAST + BENCH_SET for a in ("--set", s))
        )
    kdx("package", run, "--dir", work / "bundle", "--with-teacher", "--target", "ort-cpu")
    facts = run_facts(run)
    results = device_results(run, work, "a")
    table = measured(run, results)
    p90s = sorted(v for d in table.values() for v in d.values())
    budgets = [round(p90s[0] * 1.5, 4), round(p90s[len(p90s) // 2], 4), round(p90s[-1] * 1.1, 4)]
    # The re-measurement: a copy of the run benchmarked again, the bundle benched again.
    again = work / "again"
    shutil.copytree(run, again)
    kdx(
        "benchmark",
        again,
        *(a for s in BENCH_SET + ["benchmark.batch_sizes=[1]"] for a in ("--set", s)),
    )
    results_b = device_results(again, work, "b")
    table_b = measured(again, results_b)
    feasible, valid, within, matches, detail = {}, True, True, True, []
    equivalent = True  # same model and accuracy: ties between equal-accuracy variants are noise
    for budget in budgets:
        p = plan(run, results, budget_ms=budget, out=work / f"plan-{budget}.md")
        choice = chosen(p)
        valid &= choice == brute_force(table, facts, budget)
        feasible[str(budget)] = sorted(d for d, c in choice.items() if c)
        for device, c in choice.items():
            if c is None:
                continue
            again_p90 = table_b[device].get(c)
            ok = again_p90 is not None and again_p90 <= budget * ALLOWANCE
            within &= ok
            detail.append(
                {
                    "budget": budget,
                    "device": device,
                    "choice": c,
                    "p90": table[device][c],
                    "p90_again": again_p90,
                    "ok": ok,
                }
            )
        replan = chosen(plan(again, results_b, budget_ms=budget))
        same = replan == choice
        matches &= same
        acc = {d: c and (c[0], accuracy(facts, *c)[0]) for d, c in choice.items()}
        equivalent &= acc == {d: c and (c[0], accuracy(facts, *c)[0]) for d, c in replan.items()}
        if not same:
            print(f"budget {budget}: replanned {replan} != {choice}")
    for d in detail:
        print(json.dumps(d))
    print(f"work folder: {work}")
    print(
        json.dumps(
            {
                "devices": len(table),
                "budgets": budgets,
                "feasible": feasible,
                "plan_valid": valid,
                "p90_within_budget": within,
                "allowance": ALLOWANCE,
                "replan_matches": matches,
                "replan_same_model_and_accuracy": equivalent,
            }
        )
    )


if __name__ == "__main__":
    main()
