"""Run the default recipe end to end and check the spine's goals against what it measured.

    .venv/bin/python tools/check_default_run.py [--out runs/check] [--keep-teacher]

Prints one line per goal and, last, one JSON object with the figures. Exit status 1 if a goal
is missed. The latency ratio is measured side by side in one run (teacher and student
interleaved), never asserted in the tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

from kdexport.pipeline import distill_and_export


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/check")
    parser.add_argument("--keep-teacher", action="store_true", help="reuse a cached teacher")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.keep_teacher:
        shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    figs = distill_and_export(out)
    wall = time.perf_counter() - start
    cpu = figs["targets"]["ort-cpu"]
    t_acc, s_acc = cpu["teacher"]["accuracy"], cpu["student"]["accuracy"]
    goals = {
        "wall_s < 120": (wall, wall < 120),
        "accuracy gap <= 3 points": ((t_acc - s_acc) * 100, t_acc - s_acc <= 0.03),
        "params ratio >= 20": (
            cpu["teacher"]["params"] / cpu["student"]["params"],
            cpu["teacher"]["params"] >= 20 * cpu["student"]["params"],
        ),
        "ort-cpu batch-1 p50 speed-up >= 5": (cpu["speedup"], cpu["speedup"] >= 5),
    }
    for name, entry in figs["targets"].items():
        if "int8" in name or "fp16" in name:  # fp32's bound; the others have their own
            continue
        for model in ("teacher", "student"):
            f = entry[model]
            ok = f["max_abs_diff"] <= 1e-4 and f["top1_agreement"] == 1.0
            goals[f"{name}/{model} parity <= 1e-4, 100% top-1"] = (f["max_abs_diff"], ok)
    for goal, (value, ok) in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}: {value:.4g}")
    summary = {
        "wall_s": wall,
        "accuracy": {"teacher": t_acc, "student": s_acc},
        "params": {m: cpu[m]["params"] for m in ("teacher", "student")},
        "p50_ms": {
            t: {m: e[m].get("p50_ms") for m in ("teacher", "student")}  # None: not shipped
            for t, e in figs["targets"].items()
        },
        "speedup": {t: e["speedup"] for t, e in figs["targets"].items()},
        "passed": all(ok for _, ok in goals.values()),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
