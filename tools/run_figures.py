"""What the recipe benchmarks (tools/bench_text.py, tools/bench_speech.py) read from a finished
run: each stage's checks, the fp32 targets' speed-up and parity at one measuring point, and the
INT8 students timed against their fp32 forms here, interleaved in rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

from kdexport import modalities
from kdexport.backends import backend
from kdexport.backends.profiles import Target
from kdexport.feeds import for_model, load_sample
from kdexport.timing import measure_rounds, paired

MODELS = ("teacher", "student")
FP32 = ("ort-cpu", "openvino-cpu")
INT8 = {"ort-cpu": "ort-cpu-int8", "openvino-cpu": "openvino-cpu-int8"}
TIMING = {"warmup_iters": 20, "warmup_s": 0.2, "min_iters": 100, "min_time_s": 0.5, "rounds": 7}


def kdx(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "kdexport.cli", *args]
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL)


def checks(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["checks"]


def fp32_targets(run: Path, point: str) -> dict:
    """Per fp32 CPU target: the speed-up at ``point`` with its IQR, the worst parity of the two
    models (max abs diff, top-1 agreement)."""
    compiled, bench = checks(run, "compile")["targets"], checks(run, "benchmark")["targets"]
    return {
        name: {
            "speedup": bench[name]["speedup"][point],
            "speedup_iqr": bench[name]["speedup_detail"][point]["iqr"],
            "max_abs_diff": max(compiled[name][m]["parity"]["max_abs_diff"] for m in MODELS),
            "top1_agreement": min(compiled[name][m]["parity"]["top1_agreement"] for m in MODELS),
        }
        for name in FP32
    }


def int8_ratio(run: Path, fp32: str, int8: str, point: str) -> float | None:
    """The INT8 student's p50 over its fp32 form's at ``point``, interleaved in rounds here, on
    the inputs the benchmark stage times there (the run's modality's ``timing_inputs``)."""
    compiled, exported = checks(run, "compile")["targets"], checks(run, "export")
    if not compiled.get(int8, {}).get("student", {}).get("shipped"):
        return None
    inputs, _ = load_sample(run / "export" / "io_sample.npz")
    names = [i["name"] for i in exported["student"]["inputs"]]
    modality = modalities.get(exported["modality"])
    feed = modality.timing_inputs(for_model(inputs, names))(point)
    calls = {}
    for name in (int8, fp32):
        entry = compiled[name]
        target = Target.from_dict(entry["profile"])
        runner = backend(target.backend, name).load(
            run / "compile" / name / entry["student"]["file"], target
        )
        calls[name] = runner.bind(feed)
    rounds = measure_rounds(calls, TIMING)["samples"]
    return paired(rounds[int8], rounds[fp32])["ratio"]


def int8_students(run: Path, point: str) -> dict:
    """Per fp32 target, its INT8 student: latency ratio here, accuracy lost, shipped or why not."""
    compiled = checks(run, "compile")["targets"]
    return {
        fp32: {
            "latency_ratio": int8_ratio(run, fp32, int8, point),
            "accuracy_drop": compiled[int8]["student"].get("accuracy_drop_points"),
            "shipped": compiled[int8]["student"]["shipped"],
            "gate_reason": compiled[int8]["student"].get("reason"),
        }
        for fp32, int8 in INT8.items()
    }


def model_figures(run: Path) -> dict:
    """Teacher and student: parameters and test accuracy of the ort-cpu compiled model."""
    exported, compiled = checks(run, "export"), checks(run, "compile")["targets"]
    return {
        m: {"params": exported[m]["params"], "accuracy": compiled["ort-cpu"][m]["accuracy"]}
        for m in MODELS
    }


def verdict(goals: dict[str, bool], baseline: dict, seeds: int, figures: dict) -> int:
    """Print one line per goal, whether KD helped, and the figures as the last line (one JSON
    object); the exit status: 1 when a goal is missed."""
    for goal, ok in goals.items():
        print(f"{'ok  ' if ok else 'MISS'} {goal}")
    helped = "helped" if baseline["helped"] else "did not help"
    print(f"KD {helped}: {baseline['kd_minus_scratch'] * 100:+.2f} points (mean of {seeds} seeds)")
    print(json.dumps(figures))
    return 0 if all(goals.values()) else 1
