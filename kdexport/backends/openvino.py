"""OpenVINO backend: the ONNX model saved as OpenVINO IR with its precision pinned.

Compiled with the profile's performance hint (LATENCY by default, as ``benchmark_app -hint
latency``) and an explicit inference precision: on CPUs with bf16 support OpenVINO would
otherwise pick bf16 by itself.

A profile's device is one OpenVINO device (``CPU``, ``GPU.1``) or OpenVINO's own choice among
several (issue 15): ``AUTO`` (whatever exists), ``AUTO:GPU,CPU`` (the first in the list that
compiles the model) or ``HETERO:GPU,CPU`` (each op on the first listed device that supports
it). A profile is available only where every device it lists exists. AUTO's CPU start-up
helper and its run-time retry on another device are switched off, so that every inference runs
where ``EXECUTION_DEVICES`` says, and ``Runner.info`` records that rather than the request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from kdexport.backends import Throughput
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


VIRTUAL = ("AUTO", "HETERO")  # OpenVINO's devices that place a model on other devices
# What Runner.info reports per device that runs the model: info key -> OpenVINO property.
_REPORTED = {
    "precision": "INFERENCE_PRECISION_HINT",
    "performance_hint": "PERFORMANCE_HINT",
    "streams": "NUM_STREAMS",
    "inference_num_threads": "INFERENCE_NUM_THREADS",
}


def named_devices(device: str) -> list[str]:
    """The devices a profile's device names: ``["GPU", "CPU"]`` for ``HETERO:GPU,CPU``,
    ``["CPU"]`` for ``CPU``, none for a bare ``AUTO`` (whatever exists)."""
    virtual, _, listed = device.partition(":")
    if virtual.upper() not in VIRTUAL:
        return [device]
    return [d for d in listed.split(",") if d]


def _present(name: str, available: list[str]) -> bool:
    """``GPU`` is present when ``GPU.0`` is; ``GPU.0`` when the only GPU is listed as ``GPU``."""
    bases = {d.split(".")[0] for d in available}
    return name in available or name in bases or name.split(".")[0] in available


def devices_problem(device: str, available: list[str]) -> str | None:
    """None when the devices ``device`` names are among ``available`` (OpenVINO's
    ``Core.available_devices``), else one line: which are missing, which exist, the fix."""
    seen = ", ".join(available) or "none"
    missing = [d for d in named_devices(device) if not _present(d, available)]
    if not available or missing:
        fix = (
            "; an Intel GPU is listed once its OpenCL compute runtime is installed"
            if any(d.upper().startswith("GPU") for d in missing)
            else ""
        )
        return f"{device}: OpenVINO sees no {', '.join(missing) or 'device'} here (available_devices: {seen}){fix}"
    return None


def unavailable_reason(target) -> str | None:
    if problem := devices_problem(target.device, ov.Core().available_devices):
        return problem
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
        from kdexport.backends.quantize import for_transformers, quantize_openvino

        transformer = for_transformers(target.quantization)
        model = quantize_openvino(model, calibration, target.quantization, transformer)
    ov.save_model(model, str(out), compress_to_fp16=_PRECISIONS[target.precision][1])
    return out


class Runner:
    """A compiled model on the target. ``run`` and ``bind`` take one array (the first input)
    or a dict input name -> array."""

    def __init__(self, path: Path, target):
        self.compiled = ov.Core().compile_model(str(path), target.device, _config(path, target))
        self.request = self.compiled.create_infer_request()
        self.info = {
            "device": ",".join(self.compiled.get_property("EXECUTION_DEVICES")),
            "requested_device": target.device,
            **_executed(self.compiled),
            "openvino": ov.get_version(),
        }

    def run(self, x) -> np.ndarray:
        return self.request.infer(x if isinstance(x, dict) else {0: x})[0].copy()

    def bind(self, x):
        # Tensors that share the numpy buffers, and outputs left in the request's own tensors
        # (share_outputs, as ONNX Runtime's IO binding leaves them): nothing is copied inside
        # the timed call. Copying the outputs out made our p50 4% above benchmark_app's
        # (tools/bench_fidelity.py), whose compiled properties are the same as ours.
        if not isinstance(x, dict):
            self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        for name, value in (x if isinstance(x, dict) else {}).items():
            self.request.set_tensor(
                name, ov.Tensor(np.ascontiguousarray(value), shared_memory=True)
            )
        return lambda: self.request.infer(share_outputs=True)

    def workers(self, count: int) -> list:
        """An asynchronous infer request per caller, its inputs shared with the caller's arrays
        (the caller waits for it without holding Python's lock); 0: as many as the compiled
        model serves best (its streams under the THROUGHPUT hint)."""
        count = count or self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        return [_async_call(self.compiled.create_infer_request()) for _ in range(count)]


def _async_call(request):
    def run(x) -> np.ndarray:
        request.start_async(x if isinstance(x, dict) else {0: x}, share_inputs=True)
        request.wait()
        return request.get_output_tensor(0).data.copy()

    return run


def throughput_settings(target, cores: int) -> list[Throughput]:
    """OpenVINO's THROUGHPUT hint: it splits the CPUs into streams, one request each."""
    options = {"performance_hint": "THROUGHPUT", "inference_num_threads": cores}
    return [Throughput("THROUGHPUT hint", options, 0)]


def _config(path: Path, target) -> dict:
    """compile_model's properties for the profile. AUTO and HETERO pass the hints on to their
    devices; the CPU's own settings go to the CPU alone (DEVICE_PROPERTIES), never to a GPU."""
    precision = _PRECISIONS[target.precision][0]
    config = {
        "PERFORMANCE_HINT": target.options.get("performance_hint", "LATENCY"),
        "INFERENCE_PRECISION_HINT": precision,
    }
    # Explicit, never "0 = all": both sides of a comparison run with the same count.
    cpu = {
        "INFERENCE_NUM_THREADS": int(target.options.get("inference_num_threads", 0))
        or available_cpus()
    }
    names, virtual = named_devices(target.device), target.device.split(":")[0].upper()
    if virtual in VIRTUAL and ("CPU" in names or not names):
        if precision == "f16":  # f16 is the GPU's; a CPU part stays f32 (not bf16, as some would)
            cpu["INFERENCE_PRECISION_HINT"] = "f32"
        config["DEVICE_PROPERTIES"] = {"CPU": cpu}
    elif target.device.upper() == "CPU":
        config |= cpu
    if virtual == "AUTO":  # no CPU start-up helper, no retry elsewhere: one device runs it all
        config |= {"ENABLE_STARTUP_FALLBACK": False, "ENABLE_RUNTIME_FALLBACK": False}
    if target.options.get("cache", False):
        # Compiled blobs beside the IR: compile writes them, later loads start faster.
        config["CACHE_DIR"] = str(Path(path).parent / "cache")
    return config


def _executed(compiled) -> dict:
    """Precision, hint, streams and threads as the devices that run the model report them:
    one value when one device runs it, else device -> value (HETERO across devices)."""
    supported = compiled.get_property("SUPPORTED_PROPERTIES")
    running = compiled.get_property("EXECUTION_DEVICES")
    if "DEVICE_PROPERTIES" in supported:  # AUTO, HETERO: those of the devices that run it
        kinds = {d.split(".")[0] for d in running}
        per_device = {
            d: props
            for d, props in compiled.get_property("DEVICE_PROPERTIES").items()
            if d.split(".")[0] in kinds
        }
    else:
        per_device = {
            d: {p: compiled.get_property(p) for p in _REPORTED.values() if p in supported}
            for d in running
        }
    info = {}
    for key, prop in _REPORTED.items():
        values = {d: _plain(props[prop]) for d, props in per_device.items() if prop in props}
        if values:
            info[key] = next(iter(values.values())) if len(values) == 1 else values
    return info


def _plain(value):
    """An OpenVINO property value as JSON: ``f32`` for an element type, ints and strings."""
    if isinstance(value, ov.Type):
        return value.to_string()
    return value if isinstance(value, int) else str(value)


def load(path: Path, target) -> Runner:
    return Runner(path, target)
