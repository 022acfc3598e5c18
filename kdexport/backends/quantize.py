"""INT8 post-training static quantization, calibrated on training data, and the gate that
decides whether an INT8 model ships.

ONNX Runtime targets: QDQ quantization by ``onnxruntime.quantization.quantize_static``
(activations uint8, weights int8, per channel), after ONNX Runtime's recommended pre-processing.
OpenVINO targets: ``nncf.quantize`` on the OpenVINO model.

The gate: an INT8 model ships only if its accuracy on the test sample is within
``max_accuracy_drop`` of the fp32 model on the same backend and it is faster there (batch-1 p50,
measured interleaved with the fp32 model in one run: the median of the per-round ratios).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from kdexport.errors import KdxError
from kdexport.timing import measure_rounds, paired, summarize

ORT_METHODS = ("minmax", "entropy", "percentile")
NNCF_PRESETS = ("performance", "mixed")
GATE_TIMING = {
    "warmup_iters": 20,
    "warmup_s": 0.1,
    "min_iters": 200,
    "min_time_s": 0.6,
    "rounds": 7,
}


def _batches(x: np.ndarray, count: int) -> list[np.ndarray]:
    return [x[i : i + 1] for i in range(min(count, len(x)))]


def quantize_onnx(src: Path, dst: Path, calibration: np.ndarray, q: dict) -> None:
    """Write a QDQ INT8 copy of ``src`` to ``dst``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if q["method"] not in ORT_METHODS:
        raise KdxError(
            f"quantization.method '{q['method']}' is not one of {', '.join(ORT_METHODS)} for ONNX Runtime"
        )
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.items = iter([{"input": b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(_batches(calibration, q["calibration_samples"])),
            quant_format=QuantFormat.QDQ,
            per_channel=q["per_channel"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[q["method"]],
        )


def quantize_openvino(model, calibration: np.ndarray, q: dict):
    """An INT8 copy of an OpenVINO model, by NNCF post-training quantization."""
    import nncf

    if q["method"] not in NNCF_PRESETS:
        raise KdxError(
            f"quantization.method '{q['method']}' is not one of {', '.join(NNCF_PRESETS)} for OpenVINO"
        )
    preset = {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }
    batches = _batches(calibration, q["calibration_samples"])
    return nncf.quantize(
        model, nncf.Dataset(batches), subset_size=len(batches), preset=preset[q["method"]]
    )


def gate(int8_runner, fp32_runner, x: np.ndarray, accuracies: tuple[float, float], q: dict) -> dict:
    """Decide whether the INT8 model ships: accuracy drop within bounds and faster than fp32."""
    acc8, acc32 = accuracies
    one = np.ascontiguousarray(x[:1])
    calls = {"int8": int8_runner.bind(one), "fp32": fp32_runner.bind(one)}
    rounds = measure_rounds(calls, GATE_TIMING)["samples"]
    p50 = {k: summarize([v for r in rs for v in r])["p50_ms"] for k, rs in rounds.items()}
    # The median of per-round ratios: a burst of load lands on both sides of a round's ratio.
    paired_ratio = paired(rounds["int8"], rounds["fp32"])
    drop, ratio = acc32 - acc8, paired_ratio["ratio"]
    reasons = []
    if drop > q["max_accuracy_drop"] + 1e-12:
        reasons.append(f"accuracy drop over the limit of {q['max_accuracy_drop'] * 100:.2f} points")
    if ratio >= 1.0:
        reasons.append("not faster than fp32")
    return {
        "shipped": not reasons,
        "reason": "; ".join(reasons) or "within the accuracy limit and faster",
        "accuracy_drop_points": drop * 100,
        "latency_ratio": ratio,
        "latency_ratio_iqr": paired_ratio["iqr"],
        "fp32_accuracy": acc32,
        "int8_p50_ms": p50["int8"],
        "fp32_p50_ms": p50["fp32"],
    }
