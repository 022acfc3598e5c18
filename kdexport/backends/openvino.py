"""OpenVINO backend: the ONNX model saved as OpenVINO IR with its precision pinned.

Compiled with the profile's performance hint (LATENCY by default, as ``benchmark_app -hint
latency``) and an explicit inference precision: on CPUs with bf16 support OpenVINO would
otherwise pick bf16 by itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from kdexport.errors import KdxError
from kdexport.timing import available_cpus

RUNTIME = "OpenVINO"
RUNTIME_ERRORS = (RuntimeError,)  # OpenVINO's errors (OpConversionFailure and others) are these

# profile precision -> (OpenVINO inference precision hint, weights compressed to f16 in the IR).
# INT8 layers run in int8 whatever the hint; the hint pins the precision of the others.
_PRECISIONS = {
    "fp32": ("f32", False),
    "fp16": ("f16", True),
    "bf16": ("bf16", False),
    "int8": ("f32", False),
}


def explain(e: Exception) -> str:
    """OpenVINO's error as one line: the ops its ONNX front end could not convert, from its
    many-line report (e.g. the ai.onnx.ml ops of scikit-learn models), with the fix; else the
    message without the source locations."""
    ops = []
    for line in str(e).splitlines():
        if line.startswith("-- "):  # "-- OP with a message:", "-- No conversion rule ...: A, B"
            text = line[3:].split(" with a message")[0].rsplit(": ", 1)[-1]
            ops += [op for op in text.split(", ") if op not in ops]
    if ops:
        return (
            f"it cannot convert {', '.join(ops)}; replace them, or leave this target out "
            "(compile.targets, --target) and use ort-cpu"
        )
    lines = [
        ln
        for ln in str(e).splitlines()
        if ln.strip() and not ln.startswith(("Exception from", "Check "))
    ]
    return " ".join(" ".join(lines).split())[:300]


def unavailable_reason(target) -> str | None:
    devices = ov.Core().available_devices
    if target.device.split(".")[0] not in devices:
        return f"OpenVINO sees no {target.device} device here (it sees: {', '.join(devices) or 'none'})"
    if target.precision not in _PRECISIONS:
        return f"precision '{target.precision}' is not one of {', '.join(_PRECISIONS)}"
    return None


def compile(onnx_path: Path, out_dir: Path, name: str, target, calibration=None) -> Path:
    """Convert to IR (NAME.xml + NAME.bin); weights stay f32 unless the profile says fp16.

    INT8: the model is quantized by NNCF on the calibration data before it is saved.
    """
    out = out_dir / f"{name}.xml"
    try:
        model = ov.Core().read_model(str(onnx_path))
    except RuntimeError as e:
        raise KdxError(
            f"target '{target.name}': OpenVINO cannot read {onnx_path.name}: {explain(e)}"
        ) from None
    if target.precision == "int8":
        from kdexport.backends.quantize import quantize_openvino

        model = quantize_openvino(model, calibration, target.quantization)
    ov.save_model(model, str(out), compress_to_fp16=_PRECISIONS[target.precision][1])
    return out


class Runner:
    """A compiled model on the target. ``run`` and ``bind`` take one array (the first input)
    or a dict input name -> array."""

    def __init__(self, path: Path, target):
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": target.options.get("performance_hint", "LATENCY"),
            "INFERENCE_PRECISION_HINT": _PRECISIONS[target.precision][0],
        }
        # Explicit, never "0 = all": both sides of a comparison run with the same count.
        threads = int(target.options.get("inference_num_threads", 0))
        if threads or target.device.upper() == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads or available_cpus()
        if target.options.get("cache", False):
            # Compiled blobs beside the IR: compile writes them, later loads start faster.
            config["CACHE_DIR"] = str(Path(path).parent / "cache")
        self.compiled = core.compile_model(str(path), target.device, config)
        self.request = self.compiled.create_infer_request()
        self.info = {
            "device": target.device,
            "precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
            "streams": int(self.compiled.get_property("NUM_STREAMS")),
            "inference_num_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "openvino": ov.get_version(),
        }

    def run(self, x) -> np.ndarray:
        return self.request.infer(x if isinstance(x, dict) else {0: x})[0].copy()

    def bind(self, x):
        # Tensors that share the numpy buffers: nothing is copied inside the timed call.
        if not isinstance(x, dict):
            self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        for name, value in (x if isinstance(x, dict) else {}).items():
            self.request.set_tensor(
                name, ov.Tensor(np.ascontiguousarray(value), shared_memory=True)
            )
        return self.request.infer


def load(path: Path, target) -> Runner:
    return Runner(path, target)
