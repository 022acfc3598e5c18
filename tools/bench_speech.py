"""The speech recipe end to end (issue 22): keyword spotting distilled, exported with its log-mel
front end inside the model, and read on a device from WAV files as on the host.

    .venv/bin/python tools/bench_speech.py [--out runs/bench-speech] [--seeds 3] [--set K=V ...]

Writes the offline example (``python -m kdexport.modalities.speech.example``: ten command words
spoken by espeak-ng over its voices, speeds and pitches, mixed with noise; needs espeak-ng),
runs ``kdexport distill-and-export --recipe speech --baseline --seeds N`` (KD against the same
student trained from scratch over N seeds), then reads the run: accuracies and parameter counts,
the teacher/student speed-up at batch 1 on each fp32 target (median of per-round ratios, timed
interleaved by the benchmark stage), parity with PyTorch; INT8: the INT8 student timed
interleaved with its fp32 form here at batch 1, the accuracy it lost and whether the gate
shipped it. The front end: the run's bundle is packaged, and for the test clips the log-mel
features the host computes (PyTorch, on the clips as kdexport read them) are compared with the
bundle's (ONNX Runtime on the bundle's model, cut at its front end, on the clips as the
bundle's run.py reads them). Prints one line per goal and, last, one JSON object; exit 1 if a
goal is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from run_figures import checks, fp32_targets, int8_students, kdx, model_figures, verdict

CLIPS = 200  # test clips whose front-end features are compared


def frontend_diff(run: Path, words: Path, bundle: Path) -> dict:
    """Host log-mel features (PyTorch, kdexport's reader) against the bundle's (its model cut
    at the front end's Log, ONNX Runtime; run.py's reader) on the same WAV files."""
    import onnx
    import onnxruntime as ort
    import torch

    from kdexport.bundle import runner
    from kdexport.modalities.speech.audio import list_clips, read_clip
    from kdexport.modalities.speech.frontend import LogMel

    section = json.loads((bundle / "manifest.json").read_text())["speech"]
    rate, samples = section["sample_rate"], section["samples"]
    paths, _, _ = list_clips(words)
    picked = [paths[i] for i in np.random.default_rng(0).choice(len(paths), CLIPS, replace=False)]
    host = np.stack([read_clip(p, rate, samples) for p in picked])
    device = np.stack([runner.read_wav(p, rate, samples) for p in picked])
    frontend = LogMel({"samples": samples}).eval()
    with torch.no_grad():
        host_features = frontend(torch.from_numpy(host)).numpy()[:, 0]
    model = onnx.load(str(bundle / "student.onnx"))
    log = next(n for n in model.graph.node if n.op_type == "Log")
    cut = bundle / "frontend.onnx"
    onnx.utils.extract_model(
        str(bundle / "student.onnx"), str(cut), [section["input"]], [log.output[0]]
    )
    sess = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"])
    device_features = sess.run(None, {section["input"]: device})[0]
    cut.unlink()
    return {
        "clips": CLIPS,
        "wave_max_abs_diff": float(np.abs(host - device).max()),
        "max_abs_diff": float(np.abs(host_features - device_features).max()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="run directory (default: a temporary folder)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of KD vs scratch (default 3)")
    ap.add_argument("--set", action="append", default=[], help="a recipe override KEY=VALUE")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_speech-"))
    run = (args.out or work / "run").resolve()
    example = [sys.executable, "-m", "kdexport.modalities.speech.example", "speech-example"]
    subprocess.run(example, check=True, cwd=work)
    sets = [a for s in args.set for a in ("--set", s)]
    kdx("distill-and-export", "--recipe", "speech", "--out", str(run), "--baseline", "--seeds",
        str(args.seeds), *sets, cwd=work)  # fmt: skip
    bundle = work / "bundle"
    kdx("package", str(run), "--dir", str(bundle), cwd=work)

    models = model_figures(run)
    targets = fp32_targets(run, "1")
    int8 = int8_students(run, "1")
    frontend = frontend_diff(run, work / "speech-example" / "words", bundle)
    baseline = checks(run, "baseline")
    figures = {
        "teacher": models["teacher"],
        "student": models["student"],
        "kd_minus_scratch": baseline["kd_minus_scratch"],
        "targets": targets,
        "frontend_max_abs_diff": frontend["max_abs_diff"],
        "int8": int8,
        "frontend": frontend,
        "kd": baseline["kd"],
        "scratch": baseline["scratch"],
        "run": str(run),
    }
    goals = {
        "student >= 4x faster than the teacher at batch 1 on ort-cpu": targets["ort-cpu"]["speedup"]
        >= 4,
        "student <= 40 k parameters": models["student"]["params"] <= 40_000,
        "fp32 parity <= 1e-4 with 100% top-1 on both CPU targets": all(
            t["max_abs_diff"] <= 1e-4 and t["top1_agreement"] == 1 for t in targets.values()
        ),
        "front end: host and bundle features within 1e-4": frontend["max_abs_diff"] <= 1e-4,
    }
    return verdict(goals, baseline, args.seeds, figures)


if __name__ == "__main__":
    sys.exit(main())
