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

# profile precision -> (OpenVINO inference precision hint, weights compressed to f16 in the IR).
# INT8 layers run in int8 whatever the hint; the hint pins the precision of the others.
_PRECISIONS = {
    "fp32": ("f32", False),
    "fp16": ("f16", True),
    "bf16": ("bf16", False),
    "int8": ("f32", False),
}


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
            f"target '{target.name}': OpenVINO cannot read {onnx_path.name} ({_failed_ops(e)}); "
            f"leave {target.name} out of compile.targets"
        ) from None
    if target.precision == "int8":
        from kdexport.quantize import quantize_openvino

        model = quantize_openvino(model, calibration, target.quantization)
    ov.save_model(model, str(out), compress_to_fp16=_PRECISIONS[target.precision][1])
    return out


def _failed_ops(e: Exception) -> str:
    """The ops OpenVINO's ONNX front end could not convert, from its many-line report (e.g.
    the ai.onnx.ml ops of scikit-learn models), or the report's first lines on one line."""
    ops = []
    for line in str(e).splitlines():
        if line.startswith("-- "):  # "-- OP with a message:", "-- No conversion rule ...: A, B"
            text = line[3:].split(" with a message")[0].rsplit(": ", 1)[-1]
            ops += [op for op in text.split(", ") if op not in ops]
    if ops:
        return f"it cannot convert {', '.join(ops)}"
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:300]


class Runner:
    def __init__(self, path: Path, target):
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": target.options.get("performance_hint", "LATENCY"),
            "INFERENCE_PRECISION_HINT": _PRECISIONS[target.precision][0],
        }
        if threads := int(target.options.get("inference_num_threads", 0)):
            config["INFERENCE_NUM_THREADS"] = threads
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

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[0].copy()

    def bind(self, x: np.ndarray):
        # A tensor that shares the numpy buffer: nothing is copied inside the timed call.
        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        return self.request.infer


def load(path: Path, target) -> Runner:
    return Runner(path, target)
