"""ONNX Runtime backend: the CPU, CUDA and TensorRT execution providers.

The compiled form is the model after ONNX Runtime's graph optimisations at the profile's level,
saved per target (``optimized_model_filepath``); the portable ONNX stays the canonical artifact.
fp16 profiles first convert the model to float16 (``kdexport.backends.fp16``; inputs and outputs stay
float32 unless ``options.keep_io_types = false``) into NAME.fp16.onnx. TensorRT compiles nodes
into engines when a session starts, which ONNX Runtime cannot save: its compiled form is the
graph at the provider-independent "basic" level.

Never a silent fall back to the CPU: ONNX Runtime's Python fall back (a session or a run that
fails on a GPU provider is retried on the CPU) is switched off, a session whose first provider
is not the profile's is an error, and the nodes each provider ran are counted
(``nodes_by_provider``) so that nodes placed on the CPU are flagged.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from kdexport.backends import Throughput
from kdexport.bundle.runner import ort_callers
from kdexport.errors import KdxError
from kdexport.onnxfile import external_data_files, make_model
from kdexport.timing import available_cpus

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)
# Provider options whose values ONNX Runtime reads from a fixed list (cuda_execution_provider_info.cc).
_CHOICES = {
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
}
RUNTIME = "ONNX Runtime"
# What ONNX Runtime raises for a model or inputs it cannot run (its own types, not RuntimeError).
RUNTIME_ERRORS = (
    RuntimeError,
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    ort_errors.EPFail,
)
# ONNX Runtime's message -> the fix, for what users bring most often (issue 12).
_FIXES = {
    "Could not find an implementation": "ONNX Runtime has no kernel for this op at this opset "
    "and type: convert the model to a newer opset (onnx.version_converter) or use openvino-cpu",
    "is not a registered function/op": "ONNX Runtime does not know this op: use a target whose "
    "runtime does (openvino-cpu) or replace the op",
    "max supported IR version": "re-save the model with an older IR version, or upgrade onnxruntime",
    "Current official support for domain": "re-export at an opset this onnxruntime supports, "
    "or upgrade onnxruntime",
}
_CPP_FRAME = re.compile(r"/\S+\.(?:h|cc|cpp):\d+ .*?\) (?=[A-Z])")


def explain(e: Exception) -> str:
    """ONNX Runtime's error as one line without its C++ frames, with the fix when known."""
    text = " ".join(_CPP_FRAME.sub("", str(e)).split())[:300]
    fix = next((f for key, f in _FIXES.items() if key in str(e)), None)
    return f"{text}; {fix}" if fix else text


GPU_BUILD = "'onnxruntime-gpu[cuda,cudnn]'"  # with the CUDA and cuDNN libraries it was built for
GPU_INSTALL = f"pip uninstall -y onnxruntime && pip install {GPU_BUILD}"
_CUDA_FIX = (
    f"pip install {GPU_BUILD} (the CUDA and cuDNN libraries it was built for), or use ort-cpu"
)
_TRT_FIX = "install TensorRT for this CUDA version (pip install tensorrt), or use ort-cuda"


def provider(target) -> str:
    return target.options.get("provider", CPU)


def device_id(target) -> int:
    given = target.options.get("provider_options", {})
    return int(given.get("device_id", target.options.get("device_id", 0)))


def provider_options(target) -> dict[str, str]:
    """``[options.provider_options]`` as ONNX Runtime takes them: strings, booleans as 1/0.

    ``gpu_mem_limit = 0`` (no limit) is left out, so that ONNX Runtime's default applies.
    """
    given = {"device_id": device_id(target), **target.options.get("provider_options", {})}
    return {
        k: str(int(v)) if isinstance(v, bool) else str(v)
        for k, v in given.items()
        if not (k == "gpu_mem_limit" and v == 0)
    }


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _options_problem(options: dict) -> str | None:
    given = options.get("provider_options", {})
    if not isinstance(given, dict):
        return "options.provider_options must be a table ([options.provider_options])"
    counts = {
        f"provider_options.{k}": given[k] for k in ("device_id", "gpu_mem_limit") if k in given
    }
    if "device_id" in options:
        counts["device_id"] = options["device_id"]
    for key, value in counts.items():
        if not _count(value):
            return (
                f"options.{key} = {value!r} must be an integer >= 0 (nvidia-smi -L lists the GPUs)"
            )
    for key, choices in _CHOICES.items():
        if key in given and given[key] not in choices:
            return (
                f"options.provider_options.{key} = {given[key]!r}; use one of {', '.join(choices)}"
            )
    if given.get("enable_cuda_graph") and options.get("provider") != CUDA:
        return f'options.provider_options.enable_cuda_graph needs provider = "{CUDA}"'
    if not isinstance(options.get("keep_io_types", True), bool):
        return "options.keep_io_types must be true (float32 inputs and outputs) or false (float16)"
    blocked = options.get("fp16_op_block_list", [])
    if not isinstance(blocked, list) or not all(isinstance(op, str) for op in blocked):
        return 'options.fp16_op_block_list must be a list of op types, e.g. ["Resize"]'
    return None


def profile_problem(target) -> str | None:
    """A mistake in the profile itself (whatever the machine), as one line with the fix."""
    p = provider(target)
    if p not in ort.get_all_providers():
        return f"unknown execution provider '{p}'; use one of {CPU}, {CUDA}, {TENSORRT}"
    if p in GPU_PROVIDERS and target.device != "cuda":
        return f"device '{target.device}' does not fit {p}; set device = \"cuda\""
    if p == CPU and target.device != "cpu":
        return f'device \'{target.device}\' does not fit {CPU}; set device = "cpu" (or provider = "{CUDA}")'
    if target.precision == "fp16" and p not in GPU_PROVIDERS:
        return (
            f'precision fp16 is not supported on {p} (it needs a GPU provider): use precision = "fp32" here, '
            f'or provider = "{CUDA}" with device = "cuda" (as the ort-cuda-fp16 target)'
        )
    if target.precision not in ("fp32", "fp16", "int8"):
        return f"precision {target.precision} is not supported by the onnxruntime backend; use fp32, fp16 (GPU) or int8"
    return _options_problem(target.options)


@functools.cache
def ort_distributions() -> dict[str, Path]:
    """Each installed distribution that provides the ``onnxruntime`` module -> its __init__.py."""
    out = {}
    for name in dict.fromkeys(importlib.metadata.packages_distributions().get("onnxruntime", [])):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            dist = importlib.metadata.distribution(name)
            out[dist.metadata["Name"]] = Path(dist.locate_file("onnxruntime/__init__.py")).resolve()
    return out


def install_problem(dists: dict[str, Path], module: str | Path) -> str | None:
    """Two builds installed in one folder overwrite each other's files: a conflict. In two
    folders (``pip install --target DIR`` on PYTHONPATH) the first on sys.path is imported."""
    here = sorted(n for n, f in dists.items() if f == Path(module).resolve())
    if len(here) > 1:
        return (
            f"{' and '.join(here)} are both installed and conflict (one overwrites the other's "
            f"files); keep one: pip uninstall -y {' '.join(here)} && pip install {GPU_BUILD} "
            "(or onnxruntime, for the CPU alone)"
        )
    return None


def build_in_use(dists: dict[str, Path] | None = None, module: str | Path = ort.__file__) -> str:
    """The distribution whose files ``import onnxruntime`` found, e.g. onnxruntime-gpu."""
    dists = ort_distributions() if dists is None else dists
    return next((n for n, f in dists.items() if f == Path(module).resolve()), "onnxruntime")


def _missing_provider(p: str) -> str:
    used = build_in_use()
    where = Path(ort.__file__).resolve().parent.parent
    others = [f"{n} in {f.parent.parent}" for n, f in ort_distributions().items() if n != used]
    hidden = f"; {', '.join(others)} is installed but not the one imported" if others else ""
    fix = f": install the GPU build in its place: {GPU_INSTALL}" if p in GPU_PROVIDERS else ""
    return f"this onnxruntime ({used} {ort.__version__} in {where}) has no {p}{hidden}{fix}"


def unavailable_reason(target) -> str | None:
    """None when this machine can run ``target``, else one line: why not, and the fix."""
    if problem := profile_problem(target) or install_problem(ort_distributions(), ort.__file__):
        return problem
    p = provider(target)
    if p not in ort.get_available_providers():
        return _missing_provider(p)
    if p != CPU:
        return _probe(p, tuple(sorted(provider_options(target).items())))
    return None


def start_problem(p: str, error: str, device: int) -> str:
    """One line for a GPU provider that would not start, from ONNX Runtime's error (if any)."""
    first = " ".join(error.split())[:200]
    if "Invalid device ID" in error or "invalid device ordinal" in error:
        return (
            f"device_id {device} is out of range ({first}); set options.provider_options.device_id "
            "to a GPU this machine has (nvidia-smi -L lists them)"
        )
    if "no CUDA-capable device" in error:
        return f"{p}: no CUDA GPU is visible here ({first}); check nvidia-smi and CUDA_VISIBLE_DEVICES, or use ort-cpu"
    libs, fix = ("TensorRT", _TRT_FIX) if p == TENSORRT else ("CUDA/cuDNN", _CUDA_FIX)
    detail = f" ({first})" if first else ""
    if not first and device:  # ONNX Runtime left the provider out without saying why
        fix += f"; or device_id {device} is not a GPU here (nvidia-smi -L lists them)"
    return f"{p} is installed but cannot start{detail}: {libs} libraries missing or of another version; {fix}"


@functools.cache
def preload_gpu_libraries() -> str:
    """Load CUDA and cuDNN from the nvidia-* pip packages (those of onnxruntime-gpu[cuda,cudnn]
    or of torch) with ONNX Runtime's own ``preload_dlls``, so that a GPU session starts whether
    or not torch was imported first. Returns what it printed (its warnings)."""
    if not hasattr(ort, "preload_dlls"):
        return ""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            ort.preload_dlls(msvc=False)
    except Exception as e:  # a failed preload leaves the libraries to the session's own search
        return f"preload_dlls failed: {e}"
    return out.getvalue().strip()


def _chain(p: str, options: dict[str, str]) -> list:
    """The providers a session asks for: the profile's, then those that take what it cannot."""
    if p == CPU:
        return [CPU]
    chain = [(p, options)]
    if p == TENSORRT:  # ONNX Runtime's recommended chain: nodes TensorRT rejects go to CUDA
        chain.append((CUDA, {"device_id": options.get("device_id", "0")}))
    return [*chain, CPU]


def _new_session(source, opts, chain: list):
    """An InferenceSession with ONNX Runtime's fall back to other providers switched off."""
    if chain[0] != CPU:
        preload_gpu_libraries()
    sess = ort.InferenceSession(source, opts, providers=chain, enable_fallback=0)
    sess.disable_fallback()  # a run that fails on the GPU is an error, not a rerun on the CPU
    return sess


@functools.cache
def _probe(p: str, options: tuple) -> str | None:
    """Open a one-node session: a provider can be listed yet fail to load its libraries."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = make_model(graph)  # explicit IR version: an older onnxruntime-gpu refuses a newer one
    device = int(dict(options).get("device_id", 0))
    try:
        sess = _new_session(model.SerializeToString(), None, _chain(p, dict(options)))
    except Exception as e:  # provider libraries that fail to load raise RuntimeError or worse
        return start_problem(p, str(e), device)
    if sess.get_providers()[0] != p:
        return start_problem(p, "", device)
    return None


def _session_options(target, level: str) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if level not in _LEVELS:
        raise KdxError(
            f"target '{target.name}': graph_optimization_level must be one of {', '.join(_LEVELS)}"
        )
    opts.graph_optimization_level = _LEVELS[level]
    # Explicit, never ORT's "0 = all": both sides of a comparison run with the same count.
    opts.intra_op_num_threads = int(target.options.get("intra_op_threads", 0)) or available_cpus()
    opts.log_severity_level = 3
    return opts


def _session(path: Path, target, opts: ort.SessionOptions, cpu_only: bool = False):
    """A session on the profile's provider (or the CPU alone); any other provider is an error."""
    chain = [CPU] if cpu_only else _chain(provider(target), provider_options(target))
    try:
        sess = _new_session(str(path), opts, chain)
    except Exception as e:  # ORT raises its own exception types for bad models and providers
        raise KdxError(
            f"target '{target.name}': ONNX Runtime cannot load {path.name}: {explain(e)}"
        ) from None
    wanted = CPU if cpu_only else provider(target)
    if sess.get_providers()[0] != wanted:
        why = start_problem(wanted, "", device_id(target))
        raise KdxError(
            f"target '{target.name}': asked for {wanted} but ONNX Runtime started "
            f"{sess.get_providers()} (never a silent fall back to the CPU): {why}"
        )
    return sess


def compile(onnx_path: Path, out_dir: Path, name: str, target, calibration=None) -> Path:
    """Optimise the graph at the profile's level and save the result as NAME.onnx.

    INT8: the model is first quantized (QDQ; a text model's weights only, activations at run
    time) into the portable NAME.qdq.onnx; fp16: converted into NAME.fp16.onnx; then optimised.
    """
    if problem := profile_problem(target):
        raise KdxError(f"target '{target.name}': {problem}")
    source = onnx_path
    if target.precision == "int8":
        from kdexport.backends.quantize import (
            for_transformers,
            quantize_onnx,
            quantize_onnx_dynamic,
        )

        source = out_dir / f"{name}.qdq.onnx"
        try:
            if for_transformers(target.quantization):
                quantize_onnx_dynamic(onnx_path, source, target.quantization["per_channel"])
            else:
                quantize_onnx(onnx_path, source, calibration, target.quantization)
        except KdxError:
            raise
        except Exception as e:  # the quantizer fails on some foreign graphs (issue 12)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise KdxError(
                f"target '{target.name}': ONNX Runtime's quantizer fails on {onnx_path.name} "
                f"({type(e).__name__}: {first}); leave {target.name} out of compile.targets"
            ) from None
    elif target.precision == "fp16":
        from kdexport.backends.fp16 import convert

        source = out_dir / f"{name}.fp16.onnx"
        keep_io = target.options.get("keep_io_types", True)
        convert(onnx_path, source, keep_io, target.options.get("fp16_op_block_list", []))
    out = out_dir / f"{name}.onnx"
    level = target.options.get("graph_optimization_level", "all")
    tensorrt = provider(target) == TENSORRT
    if tensorrt and level != "disable":
        level = "basic"  # provider-independent rewrites only; TensorRT does the rest at start
    opts = _session_options(target, level)
    opts.optimized_model_filepath = str(out)
    if external_data_files(Path(source)):
        # Large models: the optimised weights go to NAME.onnx.data beside it, as in export/.
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{name}.onnx.data"
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    _session(source, target, opts, cpu_only=tensorrt)
    _drop_dangling_inputs(out)
    if tensorrt:  # the engine must build here, not first at benchmark time
        _session(out, target, _session_options(target, "disable"))
    return out


def _names_read(graph) -> set[str]:
    """Every name a node of ``graph`` or of its subgraphs reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                names |= _names_read(sub)
    return names


def _drop_dangling_inputs(path: Path) -> None:
    """ONNX Runtime saves a model of IR version 3 (weights listed as graph inputs) with the
    inputs of the initializers it folded away still declared, which then become required
    inputs with no value: drop graph inputs that nothing reads and no initializer backs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    keep = _names_read(graph) | {t.name for t in graph.initializer} | {o.name for o in graph.output}
    dangling = [v for v in graph.input if v.name not in keep]
    if dangling:
        for value in dangling:
            graph.input.remove(value)
        onnx.save(model, str(path))


def nodes_by_provider(path: Path, target) -> dict[str, int]:
    """How many graph nodes each execution provider ran, from one profiled inference.

    A CUDA target whose nodes partly run on the CPU is flagged with these counts rather than
    failing: ONNX Runtime itself places some shape computations on the CPU on purpose.
    """
    opts = _session_options(target, "disable")
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = _session(path, target, opts)
        feed = {
            i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], _dtype(i.type))
            for i in sess.get_inputs()
        }
        sess.run(None, feed, _graph_run_options(-1) if cuda_graph(target) else None)
        events = json.loads(Path(sess.end_profiling()).read_text())
    counts: dict[str, int] = {}
    for e in events:
        provider = e.get("args", {}).get("provider")
        if e.get("cat") == "Node" and provider and e["name"].endswith("_kernel_time"):
            counts[provider] = counts.get(provider, 0) + 1
    return counts


def _dtype(onnx_type: str) -> np.dtype:
    """numpy's dtype for ONNX Runtime's type string, e.g. tensor(float16); float32 if unknown."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    name = {"float": "float32", "double": "float64"}.get(name, name)
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(np.float32)


def cuda_graph(target) -> bool:
    """Whether the profile captures CUDA graphs (``provider_options.enable_cuda_graph``)."""
    return provider_options(target).get("enable_cuda_graph") in ("1", "true", "True")


def _graph_run_options(graph_id: int):
    """Run options naming the captured CUDA graph to replay (-1: run without graphs)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


class CudaGraphs:
    """One captured CUDA graph per input shape, over fixed GPU buffers (ONNX Runtime's
    ``enable_cuda_graph``): a graph replays with the addresses it was captured with, so every
    input and output is bound once to a buffer that stays, and new inputs are copied into it.

    Small models on a GPU are bound by kernel launches; a replayed graph launches them at once.
    """

    def __init__(self, sess, device: str = "cuda", device_id: int = 0):
        self.sess, self.device, self.device_id, self.graphs = sess, device, device_id, {}

    def _graph(self, feeds: dict[str, np.ndarray]):
        shapes = tuple((n, v.shape, v.dtype.str) for n, v in sorted(feeds.items()))
        if shapes not in self.graphs:
            # Output shapes from one plain run (graph id -1: nothing captured), then fixed buffers.
            plain = self.sess.run(None, feeds, _graph_run_options(-1))
            binding = self.sess.io_binding()
            inputs = {}
            for name, value in feeds.items():
                # A buffer of its own: on the CPU an OrtValue shares the array's memory, and later
                # inputs are written into it.
                own = np.array(value, copy=True)
                inputs[name] = ort.OrtValue.ortvalue_from_numpy(own, self.device, self.device_id)
                binding.bind_ortvalue_input(name, inputs[name])
            outputs = []
            for meta, value in zip(self.sess.get_outputs(), plain, strict=True):
                out = ort.OrtValue.ortvalue_from_shape_and_type(
                    value.shape, value.dtype, self.device, self.device_id
                )
                binding.bind_ortvalue_output(meta.name, out)
                outputs.append(out)
            run_options = _graph_run_options(len(self.graphs) + 1)  # ids from 1; 0 is the default
            self.sess.run_with_iobinding(binding, run_options)  # the first run captures the graph
            self.graphs[shapes] = (inputs, outputs, binding, run_options)
        return self.graphs[shapes]

    def bind(self, feeds: dict[str, np.ndarray]):
        inputs, _, binding, run_options = self._graph(feeds)
        for name, value in feeds.items():
            inputs[name].update_inplace(value)

        def call() -> None:
            self.sess.run_with_iobinding(binding, run_options)
            binding.synchronize_outputs()

        return call

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """End to end: inputs copied into the graph's buffers, a replay, outputs copied back."""
        self.bind(feeds)()
        return [out.numpy() for out in self._graph(feeds)[1]]


class Runner:
    """A session on the target. ``run`` and ``bind`` take one array (fed to the first input,
    as the run directory's models have one) or a dict input name -> array."""

    def __init__(self, path: Path, target):
        # The saved model is already optimised: load it as it is.
        self.sess = _session(path, target, _session_options(target, "disable"))
        gpu = provider(target) in GPU_PROVIDERS
        self.device, self.device_id = ("cuda", device_id(target)) if gpu else ("cpu", 0)
        self.graphs = CudaGraphs(self.sess, "cuda", self.device_id) if cuda_graph(target) else None
        self.dtypes = {i.name: _dtype(i.type) for i in self.sess.get_inputs()}
        self.input, self.dtype = next(iter(self.dtypes.items()))
        used = self.sess.get_providers()[0]
        self.info = {
            "provider": used,
            "providers": self.sess.get_providers(),
            "provider_options": self.sess.get_provider_options().get(used, {}) if gpu else {},
            "device_id": self.device_id if gpu else None,
            "precision": target.precision,
            "io_dtype": np.dtype(self.dtype).name,
            "intra_op_threads": int(target.options.get("intra_op_threads", 0)) or available_cpus(),
            "cuda_graph": self.graphs is not None,
            "onnxruntime": ort.__version__,
            "onnxruntime_build": build_in_use(),
            "nodes_by_provider": nodes_by_provider(path, target),
        }

    def _feed(self, x) -> dict[str, np.ndarray]:
        feed = x if isinstance(x, dict) else {self.input: x}
        return {n: np.ascontiguousarray(v, dtype=self.dtypes[n]) for n, v in feed.items()}

    def run(self, x) -> np.ndarray:
        if self.graphs:
            return self.graphs.run(self._feed(x))[0]
        return self.sess.run(None, self._feed(x))[0]

    def bind(self, x):
        """Inputs copied to the device once; outputs stay there (compute-only timing)."""
        if self.graphs:
            return self.graphs.bind(self._feed(x))
        binding = self.sess.io_binding()
        for name, value in self._feed(x).items():
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(value, self.device, self.device_id)
            )
        for out in self.sess.get_outputs():
            binding.bind_output(out.name, self.device, self.device_id)

        def call() -> None:
            self.sess.run_with_iobinding(binding)
            binding.synchronize_outputs()  # the GPU's work is done when the call returns

        return call

    def workers(self, count: int) -> list:
        """One session serves every caller at once (``InferenceSession.run`` is thread-safe);
        a CUDA graph is replayed by one caller at a time."""
        return [self.run] * (1 if self.graphs else count or 1)


def throughput_settings(target, cores: int) -> list[Throughput]:
    """One caller with every CPU's thread, or several callers sharing the CPUs' threads
    (``ort_callers``: the same as a bundle's ``run.py bench --scenario server``)."""
    return [
        Throughput(label, {"intra_op_threads": threads}, n)
        for label, n, threads in ort_callers(cores)
    ]


def load(path: Path, target) -> Runner:
    return Runner(path, target)
