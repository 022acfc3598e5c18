"""Checks of ONNX files before anything runs them, and the plain ONNX Runtime reference run.

A file that is not ONNX, is truncated, fails ``onnx.checker``, or has external data that points
outside its own folder is a ``KdxError`` naming the file.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import TypedDict

import numpy as np

from kdexport.backends import import_onnxruntime
from kdexport.errors import KdxError

# Models kdexport builds itself (probes, tests) state their IR version and opset: low enough for
# the oldest onnxruntime kdexport supports (1.21 reads IR 10), whatever onnx writes by default.
IR_VERSION, OPSET = 8, 17


# What ``check_onnx_file`` finds in a file; the export stage records it per model in its
# manifest's checks (JSON), so a TypedDict: it describes what is on disk, at no run-time cost.
class ValueInfo(TypedDict):
    name: str
    dtype: str
    shape: list[int | str | None]


class OnnxFacts(TypedDict):
    opset: int | None
    ir_version: int
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    external_data: list[str]


def make_model(graph, opset: int = OPSET, ir_version: int = IR_VERSION):
    """An ONNX ModelProto of ``graph`` with an explicit IR version and default-domain opset."""
    from onnx import helper

    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _graph_tensors(graph):
    """Every TensorProto of a graph: initializers, sparse ones, node attributes, subgraphs."""
    from onnx import AttributeProto

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def external_data_files(path: Path, model=None) -> list[Path]:
    """The external data files an ONNX model refers to, each checked to stay in its folder."""
    import onnx

    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    files = set()
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if os.path.isabs(location) or folder not in target.parents:
            raise KdxError(
                f"{path.name}: external data '{location}' points outside {folder}; refusing it"
            )
        if not target.is_file():
            raise KdxError(f"{path.name}: external data file '{location}' is missing")
        files.add(target)
    return sorted(files)


def _version_problem(path: Path, model) -> str | None:
    """An IR version or opset newer than this onnx package knows, as one line with the fix."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    opset = _opset(model)
    if model.ir_version > onnx.IR_VERSION:
        return (
            f"{path.name} has IR version {model.ir_version}, newer than this onnx "
            f"{onnx.__version__} reads ({onnx.IR_VERSION}): upgrade onnx and the runtimes, "
            f"or re-save the model with IR version {onnx.IR_VERSION} or older"
        )
    if opset is not None and opset > newest:
        return (
            f"{path.name} uses opset {opset}, newer than this onnx {onnx.__version__} knows "
            f"({newest}): re-export at opset {newest} or older, or upgrade onnx and the runtimes"
        )
    return None


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check_onnx_file(path: str | Path) -> OnnxFacts:
    """Load and fully check an ONNX file; return opset, IR version, inputs and outputs.

    ``inputs`` are what a caller feeds: graph inputs that are also initializers (every model of
    IR version 3 lists its weights so) have a default value and are left out.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise KdxError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others for non-ONNX bytes
        raise KdxError(
            f"{path}: not a readable ONNX model ({type(e).__name__}); re-export it"
        ) from None
    if not model.graph.node:
        raise KdxError(f"{path}: not a readable ONNX model (empty graph); re-export it")
    if problem := _version_problem(path, model):
        raise KdxError(problem)
    external = external_data_files(path, model)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # checker raises ValidationError, InferenceError and others
        raise KdxError(f"{path}: fails the ONNX checker ({str(e).splitlines()[0][:200]})") from None
    weights = {t.name for t in model.graph.initializer}
    weights |= {s.values.name for s in model.graph.sparse_initializer}
    return {
        "opset": _opset(model),
        "ir_version": model.ir_version,
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in weights],
        "outputs": [_value_info(v) for v in model.graph.output],
        "external_data": [p.name for p in external],
    }


def _value_info(value) -> ValueInfo:
    """Name, dtype and shape of a graph input or output. A dim is an int when fixed, its name
    when symbolic, None when unknown; the dtype of what is not a tensor is its kind
    (``sequence``, ``map``, ``optional``), of a tensor numpy's name or ONNX's (``string``)."""
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "dtype": (kind or "unknown").removesuffix("_type"), "shape": []}
    tt = value.type.tensor_type
    shape = [d.dim_param or d.dim_value or None for d in tt.shape.dim]
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except (KeyError, TypeError, ValueError):  # no numpy dtype (or an unknown enum value)
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "unknown"
    if tt.elem_type == onnx.TensorProto.STRING:
        dtype = "string"
    return {"name": value.name, "dtype": dtype, "shape": shape}


def _reference_session(path: Path):
    ort = import_onnxruntime("checking the exported model against PyTorch")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_reference(path: Path, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """The first output of an ONNX model for ``x`` (input name -> array, or one array for its
    first input) on ONNX Runtime's CPU provider with no graph rewrites."""
    sess = _reference_session(path)
    return sess.run(None, x if isinstance(x, dict) else {sess.get_inputs()[0].name: x})[0]


def finish_onnx(path: Path, metadata: dict[str, str], dynamic: bool) -> OnnxFacts:
    """Stamp metadata, check the graph (full check, shape inference), check the batch axis."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    facts = check_onnx_file(path)
    for value in facts["inputs"] + facts["outputs"]:
        if dynamic and not isinstance(value["shape"][0], str):
            raise KdxError(f"{path.name}: the exported batch axis of '{value['name']}' is fixed")
    return facts


def check_batch_sizes(
    path: Path, torch_outputs, feeds, x: np.ndarray, sizes: list[int], tolerance: float
) -> dict:
    """ONNX Runtime vs PyTorch at each batch size: the dynamic axis must really be dynamic.
    ``torch_outputs(xb)`` runs the model in PyTorch; ``feeds(xb)`` gives its named inputs."""
    from kdexport.evaluate import parity

    out = {}
    for size in sizes:
        xb = np.ascontiguousarray(x[np.arange(size) % len(x)])
        check = parity(run_reference(path, feeds(xb)), torch_outputs(xb), tolerance)
        if not check["passed"]:
            raise KdxError(f"{path.name} at batch {size} differs from PyTorch: {check['summary']}")
        out[str(size)] = check["max_abs_diff"]
    return out


def reference_outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output, by name, of an ONNX model for ``feed`` (input name -> array), as
    ``run_reference`` runs it. ONNX Runtime's own errors pass through."""
    sess = _reference_session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def _unsupported_op(model, args: tuple, error: str) -> str:
    """Name the op the exporter could not translate and the module that calls it."""
    import torch

    found = re.search(r"op='(aten\.\w+)'|aten::(\w+)", error)
    if not found:
        return ""
    op = found.group(1) or f"aten.{found.group(2)}"
    try:
        program = torch.export.export(model, args, strict=False)
    except Exception:  # the op is named even where the module cannot be found
        return f"op {op} is not supported by the ONNX exporters"
    for node in program.graph.nodes:
        if op.split(".")[1] in str(node.target).split(".")[1:2] or op in str(node.target):
            stack = node.meta.get("nn_module_stack") or {"": ("", "the model")}
            path, cls = list(stack.values())[-1]
            cls = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1])
            return f"op {op} in module '{path or '(top)'}' ({cls}) is not supported by the ONNX exporters"
    return f"op {op} is not supported by the ONNX exporters"


def torch_to_onnx(
    model,
    args: tuple,
    path: Path,
    opset: int,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
    external: bool = False,
    sizes: dict[str, tuple[int, int]] | None = None,
    exporters: tuple[str, str] = ("dynamo", "torchscript"),
) -> str:
    """Write ``model`` called on ``args`` to ``path``; return the exporter that succeeded.

    ``inputs``/``outputs``: name -> {axis: dim name} of the dynamic axes ({} for none); a dim
    name shared by several inputs is one dimension, bounded by ``sizes`` (name -> (min, max),
    default 1..2^20). The first of ``exporters`` runs first, then the other; a failure of both
    is a ``KdxError`` naming the unsupported op where it can be found.
    """
    import torch

    # The exporter logs and prints its progress (and "torchvision is not installed"): keep quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    names = {"input_names": list(inputs), "output_names": list(outputs), "opset_version": opset}
    dynamic = any(inputs.values())
    bounds = {n: (sizes or {}).get(n, (1, 1 << 20)) for ax in inputs.values() for n in ax.values()}
    dims = {n: torch.export.Dim(n, min=lo, max=hi) for n, (lo, hi) in bounds.items()}
    shapes = tuple({a: dims[n] for a, n in ax.items()} for ax in inputs.values())
    axes = {k: v for k, v in {**inputs, **outputs}.items() if v} if dynamic else None
    how = {
        "dynamo": {"dynamo": True, "external_data": external,
                   "dynamic_shapes": shapes if dynamic else None},
        "torchscript": {"dynamo": False, "dynamic_axes": axes},
    }  # fmt: skip
    errors = {}
    for exporter in exporters:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, args, path, **how[exporter], **names)
            return exporter
        except Exception as e:  # the exporters raise many types; try the other, then report
            errors[exporter] = e
    named = _unsupported_op(model, args, "\n".join(map(str, errors.values())))
    detail = named or "; ".join(f"{k}: {v!s:.200}" for k, v in errors.items())
    raise KdxError(f"cannot export to ONNX opset {opset}: {detail}") from None
