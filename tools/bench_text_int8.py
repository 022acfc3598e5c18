"""INT8 for a BERT-class text classifier: which quantizer per backend, by speed and logit drift.

    .venv/bin/python tools/bench_text_int8.py [--layers 4 --hidden 256 --sequence 128]

A BERT (random weights, 4 layers, hidden 256, 4 heads, sequence 128 by default) is exported
with ``kdexport.modalities.text.export`` and quantized four ways: ONNX Runtime dynamic quantization of the
MatMul/Gemm weights (``quantize_onnx_dynamic``), ONNX Runtime static QDQ (what the ort-cpu-int8
target does), NNCF on OpenVINO (what openvino-cpu-int8 does) and NNCF with its transformer
scheme. Each INT8 model is timed at batch 1 side by side with its backend's fp32 model
(interleaved rounds: the median of the per-round ratios, never a ratio of two medians), and its
logits are compared with fp32 PyTorch on padded samples: max and mean absolute drift, drift over
the logits' spread, top-1 agreement. The last line printed is one JSON object.

Random weights time faithfully but drift only roughly: trained BERTs have outlier activations
that static (calibrated) activation ranges handle worse than these do.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

from kdexport.backends import backend  # noqa: E402
from kdexport.backends.profiles import load_target  # noqa: E402
from kdexport.backends.quantize import quantize_onnx_dynamic, quantize_openvino  # noqa: E402
from kdexport.modalities.text.export import export_text_classifier, padded_batch, torch_predict  # noqa: E402
from kdexport.timing import fingerprint, measure_rounds, paired  # noqa: E402

TIMING = {"warmup_iters": 10, "warmup_s": 0.5, "min_iters": 70, "min_time_s": 3.5, "rounds": 7}


def bert(layers: int, hidden: int, heads: int, sequence: int):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=8000,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max(512, sequence),
        num_labels=3,
        initializer_range=0.05,  # logits of about one unit (0.02 gives hundredths)
    )
    return transformers.BertForSequenceClassification(config).eval()


def runner(path: Path, target_name: str, folder: Path, calibration=None):
    target = load_target(target_name)
    module = backend(target.backend, target.name)
    folder.mkdir(parents=True, exist_ok=True)
    return module.load(module.compile(path, folder, "model", target, calibration), target)


def nncf_transformer(path: Path, folder: Path, calibration):
    """NNCF with model_type TRANSFORMER (not a profile option yet), run as openvino-cpu-int8."""
    import openvino as ov

    target = load_target("openvino-cpu-int8")
    model = quantize_openvino(
        ov.Core().read_model(str(path)), calibration, target.quantization, transformer=True
    )
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return backend("openvino").load(folder / "model.xml", target)


def drift(logits: np.ndarray, reference: np.ndarray) -> dict:
    d = np.abs(logits.astype(np.float64) - reference)
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "max_over_logit_std": float(d.max() / reference.std()),
        "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
    }


def build(folder: Path, model, calibration) -> tuple[dict, dict]:
    """name -> runner, and name -> seconds its quantization (or compile) took."""
    fp32 = folder / "model.onnx"
    export_text_classifier(model, fp32)
    made, seconds = {}, {}
    steps = {
        "ort_fp32": lambda: runner(fp32, "ort-cpu", folder / "ort"),
        "ort_dynamic": lambda: (
            quantize_onnx_dynamic(fp32, folder / "dynamic.onnx"),
            runner(folder / "dynamic.onnx", "ort-cpu", folder / "ort-dynamic"),
        )[1],
        "ort_static_qdq": lambda: runner(fp32, "ort-cpu-int8", folder / "ort-qdq", calibration),
        "ov_fp32": lambda: runner(fp32, "openvino-cpu", folder / "ov"),
        "ov_nncf": lambda: runner(fp32, "openvino-cpu-int8", folder / "ov-nncf", calibration),
        "ov_nncf_transformer": lambda: nncf_transformer(fp32, folder / "ov-nncf-tr", calibration),
    }
    for name, step in steps.items():
        t0 = time.perf_counter()
        made[name] = step()
        seconds[name] = round(time.perf_counter() - t0, 2)
    return made, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--samples", type=int, default=64, help="padded samples for drift")
    args = parser.parse_args()
    model = bert(args.layers, args.hidden, args.heads, args.sequence)
    calibration = padded_batch(model, 64, args.sequence, seed=1)
    sample = padded_batch(model, args.samples, args.sequence, seed=2)
    reference = torch_predict(model)(sample).astype(np.float64)
    one = padded_batch(model, 1, args.sequence, seed=3)  # batch 1, full length
    with tempfile.TemporaryDirectory() as tmp:
        runners, seconds = build(Path(tmp), model, calibration)
        drifts = {k: drift(r.run(sample), reference) for k, r in runners.items()}
        rounds = measure_rounds({k: r.bind(one) for k, r in runners.items()}, TIMING)["samples"]
    base = {"ort": "ort_fp32", "ov": "ov_fp32"}
    out = {}
    for name in runners:
        ratio = paired(rounds[name], rounds[base[name.split("_")[0]]])
        p50 = float(np.median([v for r in rounds[name] for v in r]))
        out[name] = {
            "p50_ms": round(p50, 3),
            "latency_ratio": round(ratio["ratio"], 3),
            "ratio_iqr": [round(v, 3) for v in ratio["iqr"]],
            "drift": {k: round(v, 5) for k, v in drifts[name].items()},
            "prepare_s": seconds[name],
        }
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "heads", "sequence", "samples")}
    keep = ("cpu", "logical_cores", "cpu_flags", "versions")
    machine = {k: v for k, v in fingerprint().items() if k in keep}
    print(json.dumps({"model": shape, "batch": 1, "results": out, "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
