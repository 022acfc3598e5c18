"""ONNX Runtime backend: CPU and CUDA execution providers.

The compiled form is the model after ONNX Runtime's graph optimisations at the profile's level,
saved per target (``optimized_model_filepath``); the portable ONNX stays the canonical artifact.
A session whose first provider is not the one the profile asks for is an error, never a silent
fall back to the CPU.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdexport.errors import KdxError
from kdexport.onnxfile import external_data_files

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def unavailable_reason(target) -> str | None:
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        return (
            "onnxruntime and onnxruntime-gpu are both installed and conflict; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    provider = target.options.get("provider", "CPUExecutionProvider")
    if target.precision not in ("fp32", "int8"):
        return f"precision {target.precision} is not supported by the onnxruntime backend (use fp32 or int8)"
    if provider not in ort.get_available_providers():
        fix = (
            " (install onnxruntime-gpu in place of onnxruntime; see README)"
            if "CUDA" in provider
            else ""
        )
        return f"this onnxruntime has no {provider}{fix}"
    if provider != "CPUExecutionProvider":
        return _probe(provider, target)
    return None


def _probe(provider: str, target) -> str | None:
    """Open a one-node session: a provider can be listed yet fail to load its libraries."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        sess = ort.InferenceSession(onnx._serialize(model), providers=_providers(target))
    except Exception as e:  # provider libraries that fail to load raise RuntimeError or worse
        return f"{provider} cannot start here ({str(e).splitlines()[0][:200]}); check the CUDA/cuDNN libraries"
    if sess.get_providers()[0] != provider:
        return f"{provider} is installed but could not load (CUDA or cuDNN libraries missing?)"
    return None


def _providers(target) -> list:
    provider = target.options.get("provider", "CPUExecutionProvider")
    if provider == "CPUExecutionProvider":
        return [provider]
    return [
        (provider, {"device_id": int(target.options.get("device_id", 0))}),
        "CPUExecutionProvider",
    ]


def _session_options(target, level: str) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if level not in _LEVELS:
        raise KdxError(
            f"target '{target.name}': graph_optimization_level must be one of {', '.join(_LEVELS)}"
        )
    opts.graph_optimization_level = _LEVELS[level]
    opts.intra_op_num_threads = int(target.options.get("intra_op_threads", 0))
    opts.log_severity_level = 3
    return opts


def _session(path: Path, target, opts: ort.SessionOptions) -> ort.InferenceSession:
    try:
        sess = ort.InferenceSession(str(path), opts, providers=_providers(target))
    except Exception as e:  # ORT raises its own exception types for bad models
        raise KdxError(
            f"target '{target.name}': ONNX Runtime cannot load {path.name}: {str(e)[:300]}"
        ) from None
    wanted = target.options.get("provider", "CPUExecutionProvider")
    if sess.get_providers()[0] != wanted:
        raise KdxError(
            f"target '{target.name}': asked for {wanted} but ONNX Runtime gave {sess.get_providers()}"
        )
    return sess


def compile(onnx_path: Path, out_dir: Path, name: str, target, calibration=None) -> Path:
    """Optimise the graph at the profile's level and save the result as NAME.onnx.

    INT8: the model is first quantized (QDQ) into the portable NAME.qdq.onnx, then optimised.
    """
    source = onnx_path
    if target.precision == "int8":
        from kdexport.quantize import quantize_onnx

        source = out_dir / f"{name}.qdq.onnx"
        quantize_onnx(onnx_path, source, calibration, target.quantization)
    elif target.precision != "fp32":
        raise KdxError(
            f"target '{target.name}': precision {target.precision} is not supported by the onnxruntime backend"
        )
    out = out_dir / f"{name}.onnx"
    opts = _session_options(target, target.options.get("graph_optimization_level", "all"))
    opts.optimized_model_filepath = str(out)
    if external_data_files(Path(source)):
        # Large models: the optimised weights go to NAME.onnx.data beside it, as in export/.
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{name}.onnx.data"
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    _session(source, target, opts)
    return out


def nodes_by_provider(path: Path, target) -> dict[str, int]:
    """How many graph nodes each execution provider ran, from one profiled inference.

    A CUDA target whose nodes partly run on the CPU is flagged with these counts rather than
    failing: ONNX Runtime itself places some shape computations on the CPU on purpose.
    """
    import json

    opts = _session_options(target, "disable")
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = _session(path, target, opts)
        first = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in first.shape]
        sess.run(None, {first.name: np.zeros(shape, np.float32)})
        events = json.loads(Path(sess.end_profiling()).read_text())
    counts: dict[str, int] = {}
    for e in events:
        provider = e.get("args", {}).get("provider")
        if e.get("cat") == "Node" and provider and e["name"].endswith("_kernel_time"):
            counts[provider] = counts.get(provider, 0) + 1
    return counts


class Runner:
    def __init__(self, path: Path, target):
        # The saved model is already optimised: load it as it is.
        self.sess = _session(path, target, _session_options(target, "disable"))
        self.device = "cuda" if target.device == "cuda" else "cpu"
        self.device_id = int(target.options.get("device_id", 0))
        self.input = self.sess.get_inputs()[0].name
        self.info = {
            "providers": self.sess.get_providers(),
            "precision": target.precision,
            "intra_op_threads": int(target.options.get("intra_op_threads", 0)),
            "onnxruntime": ort.__version__,
            "nodes_by_provider": nodes_by_provider(path, target),
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.input: x})[0]

    def bind(self, x: np.ndarray):
        binding = self.sess.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(x), self.device, self.device_id
        )
        binding.bind_ortvalue_input(self.input, value)
        for out in self.sess.get_outputs():
            binding.bind_output(out.name, self.device, self.device_id)

        def call() -> None:
            self.sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return call


def load(path: Path, target) -> Runner:
    return Runner(path, target)
