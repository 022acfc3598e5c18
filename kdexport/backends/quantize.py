"""INT8 post-training static quantization, calibrated on training data, and the gate that
decides whether an INT8 model ships.

ONNX Runtime targets: QDQ quantization by ``onnxruntime.quantization.quantize_static``
(activations uint8, weights int8, per channel), after ONNX Runtime's recommended pre-processing.
``quantize_onnx_dynamic``: weights only, activations at run time (for transformers).
OpenVINO targets: ``nncf.quantize`` on the OpenVINO model.

The gate: an INT8 model ships only if its accuracy on the test sample is within
``max_accuracy_drop`` of the fp32 model on the same backend and it is faster there (batch-1 p50,
measured interleaved with the fp32 model in one run: the median of the per-round ratios).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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


def for_transformers(q: dict) -> bool:
    """Whether the run's modality quantizes its models as measured best for transformers
    (``q["scheme"]``, set by the compile stage; docs/text-export.md): ONNX Runtime's dynamic
    quantization, NNCF's transformer scheme."""
    return q.get("scheme") == "transformer"


def _batches(x, count: int) -> list:
    """Batch-1 slices of the calibration data: of an array (the first input), or of a dict
    input name -> array (a text model's input_ids, attention_mask, ...), as such dicts."""
    if isinstance(x, dict):
        n = min(len(v) for v in x.values())
        return [{k: v[i : i + 1] for k, v in x.items()} for i in range(min(count, n))]
    return [x[i : i + 1] for i in range(min(count, len(x)))]


def quantize_onnx(src: Path, dst: Path, calibration, q: dict) -> None:
    """Write a QDQ INT8 copy of ``src`` to ``dst``; ``calibration`` as ``_batches`` takes it."""
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
            self.items = iter([b if isinstance(b, dict) else {"input": b} for b in batches])

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
            nodes_to_exclude=q.get("float_nodes") or [],
        )


def quantize_onnx_dynamic(src: Path, dst: Path, per_channel: bool = False) -> None:
    """Write a copy of ``src`` to ``dst`` whose MatMul and Gemm weights are INT8 (signed,
    symmetric) and whose activations are quantized at run time (uint8, each tensor's own
    range): ``onnxruntime.quantization.quantize_dynamic``. No calibration data; the choice
    for transformers on ONNX Runtime's CPU provider (docs/text-export.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's intermediate shapes (value_info) are dropped first: with onnx 1.17 the
    # quantizer's shape inference rejects some of an exported BERT's (its own inference
    # disagrees); the weights alone need none. No pre-processing, for the same reason.
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.onnx"
        onnx.save(model, str(plain))
        quantize_dynamic(
            str(plain),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            # Weights only: attention's activation-by-activation MatMuls stay float (measured on
            # the text recipe's student: 0.82-0.84x fp32 at 1x128 against 0.86x, same accuracy).
            extra_options={"MatMulConstBOnly": True},
        )


def quantize_openvino(model, calibration, q: dict, transformer: bool = False):
    """An INT8 copy of an OpenVINO model, by NNCF post-training quantization.

    ``transformer``: NNCF's transformer scheme (``nncf.ModelType.TRANSFORMER``), which leaves
    the ops that lose most in INT8 in a transformer (softmax inputs, layer norms...) in float."""
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
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    if q.get("float_nodes"):  # OpenVINO keeps the ONNX node names as the ops' names
        extra["ignored_scope"] = nncf.IgnoredScope(names=q["float_nodes"], validate=False)
    return nncf.quantize(
        model, nncf.Dataset(batches), subset_size=len(batches), preset=preset[q["method"]], **extra
    )


def gate(int8_runner, fp32_runner, x, accuracies: tuple[float, float], q: dict) -> dict:
    """Decide whether the INT8 model ships: accuracy drop within bounds and faster than fp32
    (timed on the first sample of ``x``: an array, or a dict of named inputs)."""
    acc8, acc32 = accuracies
    one = _batches(x, 1)[0]
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
