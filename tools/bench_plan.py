"""Placement plans on real measurements (issue 15): a fleet of stand-in devices on this machine.

Devices: ``local`` (the run's benchmark stage: ORT and OpenVINO, FP32 and INT8), and two
``run.py bench --all-variants`` devices from the run's bundle: ``cpu0-1thread`` (pinned to CPU
0, one thread) and ``all-2threads``. Three budgets are planned, each between two measured p90s
(a budget equal to a measured p90 would test the coin, not the plan). Each plan is checked
against a brute-force choice over the measured variants; then the plan is packaged (``kdexport
package --plan``) and every stand-in device runs ``run.py bench --device NAME``, which times
the variant the plan assigned with the settings it was measured with, to see its p90 within the
budget (15% allowance); ``local`` is re-measured by ``kdexport benchmark`` of a copy of the run.
Planning the second measurements must pick the same variants.

    .venv/bin/python tools/bench_plan.py [--run runs/digits]   # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's kdexport

from kdexport.bundle.runner import BUSY_SHARE
from kdexport.plan import LOCAL, NOISE, PORTABLE, accuracy, plan, run_facts

BENCH = ["--batch-sizes", "1", "--min-iters", "200", "--min-time-s", "0.3", "--rounds", "3"]
DEVICES = {"cpu0-1thread": ["--threads", "1", "--cpus", "0"], "all-2threads": ["--threads", "2"]}
FAST = ["teacher.epochs=2", "distill.epochs=2", "benchmark.batch_sizes=[1]"]
BENCH_SET = ["benchmark.min_iters=200", "benchmark.min_time_s=0.3", "benchmark.rounds=3"]
ALLOWANCE = 1.15


def kdx(*args) -> None:
    cmd = [sys.executable, "-m", "kdexport.cli", *map(str, args)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def runpy(bundle: Path, *args) -> None:
    cmd = [sys.executable, bundle / "run.py", *args]
    subprocess.run(list(map(str, cmd)), check=True, stdout=subprocess.DEVNULL)


def device_results(bundle: Path, work: Path, tag: str) -> list[Path]:
    """``run.py bench --all-variants`` of the bundle on each stand-in device."""
    out = []
    for device, flags in DEVICES.items():
        path = work / f"{device}-{tag}.json"
        runpy(bundle, "bench", "--all-variants", "--device", device, "--out", path, *flags, *BENCH)
        out += sorted(work.glob(f"{device}-{tag}*.json"))
    return out


def measured(run: Path, results: list[Path]) -> dict:
    """device -> (model, target) -> (p90, round spread, p50) at batch 1, read straight from
    the files."""
    bench = json.loads((run / "benchmark" / "manifest.json").read_text())["checks"]["targets"]
    table = {
        LOCAL: {
            (m, t): tuple(e[m]["latency"]["1"][k] for k in ("p90_ms", "round_spread", "p50_ms"))
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
                lat = e["latency"]["1"]
                table.setdefault(r["device"], {})[(m, target)] = (
                    lat["p90_ms"],
                    lat["round_spread"],
                    lat["p50_ms"],
                )
    return table


def busy(results: list[Path]) -> int:
    """How many result files were measured while other processes used more than BUSY_SHARE of
    the CPUs (their figures say more about the neighbours than about the device)."""
    shares = [
        json.loads(p.read_text())["results"]["noise"]["others_cpu_share_max"] for p in results
    ]
    return sum(1 for s in shares if s is not None and s > BUSY_SHARE)


def valid_choice(variants: dict, facts: dict, budget: float, choice) -> bool:
    """Brute force: the choice is among the most accurate variants whose p90 (raised by its
    spread) meets the budget, and no equally accurate one has a p50 lower beyond noise."""
    fits = {
        k: v
        for k, v in variants.items()
        if v[0] * (1 + v[1]) <= budget and accuracy(facts, *k)[0] is not None
    }
    if not fits:
        return choice is None
    best = max(accuracy(facts, *k)[0] for k in fits)
    top = {k: v for k, v in fits.items() if accuracy(facts, *k)[0] == best}
    if choice not in top:
        return False
    _, spread, p50 = top[choice]
    return all(q * (1 + max(NOISE, s + spread)) >= p50 for _, s, q in top.values())


def chosen(p: dict) -> dict:
    return {
        d: (v["choice"]["model"], v["choice"]["target"]) if v["choice"] else None
        for d, v in p["devices"].items()
    }


def budgets_between(table: dict) -> list[float]:
    """Three budgets, each the geometric mean of two neighbouring measured p90 bounds: in the
    fastest third, the middle third and the slowest third of the bounds, the widest gap (by
    ratio) of each. A budget within noise of a variant's p90 would re-plan by chance: the plan
    cannot be steadier than the figures it reads, so the tool tests it where they differ."""
    bounds = sorted({round(p * (1 + s), 6) for d in table.values() for p, s, _ in d.values()})
    gaps = list(range(len(bounds) - 1))
    thirds = [gaps[i * len(gaps) // 3 : (i + 1) * len(gaps) // 3] or gaps for i in range(3)]
    picks = [max(third, key=lambda i: bounds[i + 1] / bounds[i]) for third in thirds]
    return [round(math.sqrt(bounds[i] * bounds[i + 1]), 4) for i in picks]


def recheck(run: Path, work: Path, budget: float, p: dict) -> list[dict]:
    """Each stand-in device runs its planned variant from the plan's bundle."""
    bundle = work / f"planned-{budget}"
    kdx("package", run, "--dir", bundle, "--plan", work / f"plan-{budget}.json")
    rows = []
    for device in DEVICES:
        if not p["devices"][device]["feasible"]:
            continue
        out = work / f"recheck-{device}-{budget}.json"
        # No --threads/--cpus: run.py takes those the plan's measurement used.
        runpy(bundle, "bench", "--device", device, "--out", out, *BENCH)
        rows.append(json.loads(out.read_text())["plan"])
    return rows


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
    facts = run_facts(run)
    ort_targets = [
        t
        for t, e in facts["targets"].items()
        if e["backend"] == "onnxruntime" and t.startswith("ort-cpu")
    ]
    full = work / "bundle"
    kdx(
        "package",
        run,
        "--dir",
        full,
        "--with-teacher",
        *(a for t in ort_targets for a in ("--target", t)),
    )
    results = device_results(full, work, "a")
    table = measured(run, results)
    budgets = budgets_between(table)
    # The re-measurement: a copy of the run benchmarked again, the bundle benched again.
    again = work / "again"
    shutil.copytree(run, again)
    kdx(
        "benchmark",
        again,
        *(a for s in BENCH_SET + ["benchmark.batch_sizes=[1]"] for a in ("--set", s)),
    )
    results_b = device_results(full, work, "b")
    table_b = measured(again, results_b)
    feasible, valid, within, matches, detail = {}, True, True, True, []
    for budget in budgets:
        p = plan(run, results, budget_ms=budget, out=work / f"plan-{budget}.md")
        choice = chosen(p)
        valid &= all(valid_choice(table[d], facts, budget, c) for d, c in choice.items())
        feasible[str(budget)] = sorted(d for d, c in choice.items() if c)
        checks = {r["device"]: r["p90_ms"] for r in recheck(run, work, budget, p)}
        if choice.get(LOCAL):
            checks[LOCAL] = table_b[LOCAL][choice[LOCAL]][0]
        for device, p90_again in checks.items():
            ok = p90_again <= budget * ALLOWANCE
            within &= ok
            c = choice[device]
            detail.append(
                {
                    "budget": budget,
                    "device": device,
                    "choice": c,
                    "p90": table[device][c][0],
                    "p90_again": p90_again,
                    "ok": ok,
                }
            )
        replan = chosen(plan(again, results_b, budget_ms=budget))
        matches &= replan == choice
        if replan != choice:
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
                "busy_results": busy(results + results_b),
                "results": len(results + results_b),
            }
        )
    )


if __name__ == "__main__":
    main()
