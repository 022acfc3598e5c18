"""A quick ONNX Runtime CPU batch-1 latency of waveform models, for sizing teacher and student.

Not the pipeline's benchmark (``kdexport.benchmark`` measures compiled targets): this exports
each model with the repository's exporter and times one clip at a time with one intra-op thread
(a shared machine's other load moves multi-threaded figures more), the models alternating in
rounds so that a slow spell of the machine hits all of them alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

INPUT, OUTPUT = "audio", "logits"


def export_waveform_model(model: torch.nn.Module, path: Path, samples: int = 16000) -> str:
    """Write ``model`` (waveform in, logits out, dynamic batch) to ``path``; return the exporter."""
    from kdexport.onnxfile import torch_to_onnx

    example = torch.zeros(2, samples)
    batch = {0: "batch"}
    return torch_to_onnx(model.eval(), (example,), path, 18, {INPUT: batch}, {OUTPUT: batch})


def onnx_latency_ms(
    models: dict[str, torch.nn.Module], rounds: int = 15, iters: int = 20, samples: int = 16000
) -> dict[str, float]:
    """Median batch-1 latency in ms of each model on ONNX Runtime CPU (one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    x = {INPUT: np.random.default_rng(0).normal(0, 0.1, (1, samples)).astype(np.float32)}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            export_waveform_model(model, path, samples)
            sessions[name] = ort.InferenceSession(str(path), opts, ["CPUExecutionProvider"])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            session.run(None, x)  # warm-up: first run of a round allocates
            start = time.perf_counter()
            for _ in range(iters):
                session.run(None, x)
            times[name].append((time.perf_counter() - start) / iters * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
