"""The text recipe end to end (issue 14): does distillation make a BERT classifier fast enough,
and does the shipped model answer as PyTorch?

    .venv/bin/python tools/bench_text.py [--out runs/bench-text] [--seeds 3] [--set KEY=VALUE ...]

Writes the offline example (``python -m kdexport.modalities.text.example``: synthetic reviews and an
untrained BERT teacher), runs ``kdexport distill-and-export --recipe text --baseline --seeds N``
(the teacher trained here, the student distilled, KD compared with the same student trained from
scratch over N seeds), then reads the run: accuracies and parameter counts, the teacher/student
speed-up at 1x128 on each fp32 target (median of per-round ratios, as the benchmark stage
measured them interleaved), parity with PyTorch, and padding invariance. INT8: the INT8 student
timed interleaved with its fp32 form on the same runtime at 1x128 here (median of per-round
ratios), with the accuracy it lost and whether the gate shipped it. Prints one line per goal
and, last, one JSON object. Exit status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from run_figures import checks, fp32_targets, int8_students, kdx, model_figures, verdict

SHAPE = "1x128"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="the run directory (default: a temporary one)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="a recipe override (smoke runs)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_text-"))
    run = (args.out or work / "run").resolve()
    example = [sys.executable, "-m", "kdexport.modalities.text.example"]
    subprocess.run(example, check=True, cwd=work, stdout=subprocess.DEVNULL)
    kdx(
        "distill-and-export",
        "--recipe",
        "text",
        "--out",
        str(run),
        "--baseline",
        "--seeds",
        str(args.seeds),
        *(a for s in args.set for a in ("--set", s)),
        cwd=work,
    )

    exported, models = checks(run, "export"), model_figures(run)
    targets = fp32_targets(run, SHAPE)
    for figures in targets.values():  # this tool's JSON keys the speed-up by its shape
        figures["speedup"] = {SHAPE: figures["speedup"]}
    int8 = int8_students(run, SHAPE)
    drift = max(exported[m]["padding_drift"] for m in ("teacher", "student"))
    baseline = checks(run, "baseline")
    figures = {
        "teacher": models["teacher"],
        "student": models["student"],
        "targets": targets,
        "int8": int8,
        "padding_invariant": drift <= 1e-4,
        "padding_drift": drift,
        "kd_minus_scratch": baseline["kd_minus_scratch"],
        "kd": baseline["kd"],
        "scratch": baseline["scratch"],
        "run": str(run),
    }
    goals = {
        f"student >= 4x faster than the teacher at {SHAPE} on ort-cpu": targets["ort-cpu"][
            "speedup"
        ][SHAPE]
        >= 4,
        "fp32 parity <= 1e-4 with 100% top-1 on both CPU targets": all(
            t["max_abs_diff"] <= 1e-4 and t["top1_agreement"] == 1 for t in targets.values()
        ),
        "an INT8 student at <= 0.7x its fp32 latency with <= 1 point lost": any(
            i["shipped"]
            and i["latency_ratio"] is not None
            and i["latency_ratio"] <= 0.7
            and i["accuracy_drop"] <= 1
            for i in int8.values()
        ),
        "padding does not change a sample's logits": figures["padding_invariant"],
    }
    return verdict(goals, baseline, args.seeds, figures)


if __name__ == "__main__":
    sys.exit(main())
