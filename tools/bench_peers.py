"""kdexport's transformer export against Optimum's, side by side (issue 24).

    .venv/bin/python tools/bench_peers.py [--out DIR] [--rounds 9]

1. A BERT-class classifier folder made offline (4 layers, hidden 256, 4 heads, 8 labels, a
   WordPiece tokenizer of made-up texts; untrained weights: speed and parity do not need
   training).
2. Optimum's export of it (``optimum-cli export onnx --task text-classification``), run in a
   venv of its own, ``.venv-peers`` beside ``.venv`` (created on first use with the CPU build of
   torch and optimum-onnx: Optimum pins another transformers than kdexport's), and kdexport's
   (``export_text_classifier``, what ``kdexport export`` runs on a text model).
3. One neutral timer for both: an ONNX Runtime session with its default optimizations, 2
   intra-op threads, batch 1 x 96 tokens, in alternating rounds; each round's median, the ratio
   kdexport / Optimum as the median of per-round ratios. Parity: the largest absolute
   difference of each file's logits from PyTorch's on the same padded batches. Both files are
   also timed on OpenVINO's CPU plugin (LATENCY hint, 2 threads, f32) the same way.

Prints one JSON object last: {"bert_1x96_ms": {"optimum": a, "kdexport": b}, "ratio": b/a,
"max_abs_diff": {"optimum": c, "kdexport": d}, ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's kdexport

import numpy as np
import onnxruntime as ort
import torch

from kdexport.modalities.text.export import export_text_classifier, padded_batch
from kdexport.modalities.text.tiny import tiny_teacher

VENV = ROOT / ".venv-peers"
PINS = [
    "torch==2.13.0+cpu",
    "optimum-onnx==0.1.0",
    "onnxruntime",
]  # optimum-onnx brings transformers 4.57; its export checks with onnxruntime
SHAPE = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
         "intermediate_size": 1024, "max_position_embeddings": 128}  # fmt: skip
WORDS = "the food service staff screen battery plot was is good bad great awful fine not very"


def peers_venv() -> Path:
    """``.venv-peers`` with Optimum's exporter (created once; reused while the pins hold)."""
    stamp = VENV / ".kdexport-pins"
    if stamp.is_file() and stamp.read_text() == " ".join(PINS):
        return VENV / "bin"
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    cpu = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    if subprocess.run([*pip, PINS[0]], check=False).returncode:
        subprocess.run([*pip, *cpu, PINS[0]], check=True)
    subprocess.run([*pip, *PINS[1:]], check=True)
    stamp.write_text(" ".join(PINS))
    return VENV / "bin"


def bert_folder(work: Path) -> Path:
    folder = work / "bert"
    if not (folder / "config.json").is_file():
        rng = np.random.default_rng(0)
        texts = [" ".join(rng.choice(WORDS.split(), 12)) for _ in range(500)]
        tiny_teacher(folder, texts, [f"label{i}" for i in range(8)], **SHAPE)
    return folder


def run_rounds(sessions: dict, feed: dict, rounds: int, iters: int = 200) -> dict:
    """Per-round medians (ms) of each session, the sessions alternating within each round."""
    for s in sessions.values():
        for _ in range(50):
            s.run(None, feed)
    medians = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                s.run(None, feed)
                times.append(time.perf_counter() - start)
            medians[name].append(float(np.median(times)) * 1000)
    return medians


class _OpenVINO:
    """An OpenVINO CPU model (LATENCY hint, 2 threads) with ONNX Runtime's ``run``."""

    def __init__(self, path: Path):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2,
                  "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
        self.request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def run(self, _, feed: dict):
        return self.request.infer(feed, share_outputs=True)


def openvino_sessions(files: dict) -> dict:
    return {k: _OpenVINO(p) for k, p in files.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary folder)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    work = (args.out or Path(tempfile.mkdtemp(prefix="bench_peers-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folder = bert_folder(work)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    files = {"kdexport": work / "kdexport.onnx", "optimum": work / "optimum" / "model.onnx"}
    exporter = export_text_classifier(model, files["kdexport"])["exporter"]
    cli = peers_venv() / "optimum-cli"
    subprocess.run([str(cli), "export", "onnx", "--model", str(folder), "--task",
                    "text-classification", str(files["optimum"].parent)],
                   check=True, capture_output=True)  # fmt: skip
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sessions = {
        k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for k, p in files.items()
    }
    diffs = {k: 0.0 for k in files}
    for batch, seq in ((1, 96), (4, 64), (3, 37)):
        feed = padded_batch(model, batch, seq, seed=batch)
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        for k, s in sessions.items():
            names = {i.name for i in s.get_inputs()}
            out = s.run(None, {n: v for n, v in feed.items() if n in names})[0]
            diffs[k] = max(diffs[k], float(np.abs(out - ref).max()))
    feed = padded_batch(model, 1, 96)
    medians = run_rounds(sessions, feed, args.rounds)
    ratios = np.array(medians["kdexport"]) / np.array(medians["optimum"])
    ov = run_rounds(openvino_sessions(files), feed, args.rounds)
    ov_ratios = np.array(ov["kdexport"]) / np.array(ov["optimum"])
    figures = {
        "bert_1x96_ms": {k: float(np.median(v)) for k, v in medians.items()},
        "ratio": float(np.median(ratios)),
        "ratio_iqr": [float(x) for x in np.percentile(ratios, [25, 75])],
        "max_abs_diff": diffs,
        "openvino_1x96_ms": {k: float(np.median(v)) for k, v in ov.items()},
        "openvino_ratio": float(np.median(ov_ratios)),
        "kdexport_exporter": exporter,
        "rounds": args.rounds,
        "shape": SHAPE,
        "onnxruntime": ort.__version__,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
