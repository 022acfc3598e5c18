"""An ONNX model as a teacher: which input and output it reads, and that view as an ONNX file.

Converters of classic ML models (skl2onnx, onnxmltools) write a classifier with two outputs, the
label and the class probabilities, and a flat feature-vector input. kdexport reads one float
(batch, classes) output (``teacher.output`` names it when there are several), flattens the data's
images for a model that takes vectors of the same size, and turns probabilities into
log-probabilities, so that KD's temperature acts on them as on logits: softmax(log p / T) is
p^(1/T) normalised (Hinton et al. 2015). ``view_model`` writes exactly that as an ONNX model (the
run's ``teacher.onnx``), so every later stage compares the runtimes with what the student learnt
from (issue 12).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import nn

from kdexport.backends import import_onnxruntime
from kdexport.errors import KdxError

KINDS = ("auto", "logits", "probabilities")
# Probabilities are clamped to at least EPS before the log: tree ensembles and k-NN give exact
# zeros, whose log would be -inf.
EPS = 1e-6
NO_ZIPMAP = "skl2onnx: to_onnx(model, X, options={'zipmap': False})"


class TeacherView(TypedDict):
    """What an ONNX teacher reads and how (``OnnxModel.describe``): the teacher stage records it
    as ``onnx_teacher`` in its manifest's checks, the export stage beside the copied file."""

    input: str
    input_flattened: str | None
    outputs: list[str]
    output: str
    output_kind: str
    output_kind_from: str


def _dims(value, batch: str = "N") -> list | None:
    """The dims of a tensor value (None: no shape given); a free batch axis reads ``batch``."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tensor.shape.dim
    ]
    if dims and (not isinstance(dims[0], int) or dims[0] == 0):
        dims[0] = batch
    return dims


def _shape(dims) -> str:
    return (
        "(shape unknown)"
        if dims is None
        else f"({', '.join(map(str, dims))}{',' * (len(dims) == 1)})"
    )


def _type(t) -> str:
    """A value's type in words: 'float32 (N, 10)', 'a sequence of maps'."""
    import onnx

    which = t.WhichOneof("value")
    if which == "tensor_type":
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type).name
        except KeyError:  # an undefined or newer element type
            dtype = "tensor"
        return f"{dtype} {_shape(_dims(onnx.ValueInfoProto(type=t)))}"
    if which == "sequence_type":
        inner = t.sequence_type.elem_type
        return "a sequence of maps" if inner.WhichOneof("value") == "map_type" else "a sequence"
    return which.replace("_type", "")


def _is_zipmap(value) -> bool:
    seq = value.type.sequence_type
    return value.type.HasField("sequence_type") and seq.elem_type.HasField("map_type")


def _is_scores(value) -> bool:
    """A float32 tensor of rank 2 (or of unknown rank): it may hold (batch, classes) scores."""
    import onnx

    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
        return False
    return (dims := _dims(value)) is None or len(dims) == 2


def _choose_output(name: str, outputs: list, wanted: str):
    """The output holding class scores: ``wanted`` or the only float (batch, classes) one."""
    listing = ", ".join(f"'{o.name}' {_type(o.type)}" for o in outputs)

    def zipmap(output: str) -> KdxError:
        return KdxError(
            f"{name}: output '{output}' is a sequence of maps (ZipMap), not a tensor of class "
            f"scores; convert the classifier without ZipMap ({NO_ZIPMAP})"
        )

    if wanted:
        chosen = next((o for o in outputs if o.name == wanted), None)
        if chosen is None:
            raise KdxError(
                f"teacher.output '{wanted}' is not an output of {name}; its outputs: {listing}"
            )
        if _is_zipmap(chosen):
            raise zipmap(wanted)
        if not _is_scores(chosen):
            raise KdxError(
                f"teacher.output '{wanted}' is {_type(chosen.type)}, not float32 class scores "
                f"(batch, classes); {name}'s outputs: {listing}"
            )
        return chosen
    candidates = [o for o in outputs if _is_scores(o)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(f"'{o.name}' {_type(o.type)}" for o in candidates)
        raise KdxError(
            f"{name} has {len(candidates)} outputs that may hold class scores ({names}); set "
            "teacher.output to the one that does"
        )
    if zipmaps := [o for o in outputs if _is_zipmap(o)]:
        raise zipmap(zipmaps[0].name)
    raise KdxError(
        f"{name} has no float32 (batch, classes) output to learn from (outputs: {listing}); "
        f"convert it so that one output holds the class scores ({NO_ZIPMAP})"
    )


def _flattens(name: str, inputs: list, sample: tuple | None) -> bool:
    """Check the teacher's single input against the data's samples (C, H, W); True when the
    model takes flat vectors of the same size (scikit-learn models do), fed flattened images."""
    import onnx

    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}' {_type(i.type)}" for i in inputs)
        raise KdxError(
            f"{name} takes {len(inputs)} inputs ({names}); kdexport feeds a teacher one float32 "
            "batch of the data's samples: export it with a single input"
        )
    inp = inputs[0]
    dims, data = _dims(inp), _shape(["N", *sample]) if sample else "(N, ...)"
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise KdxError(
            f"{name}: input '{inp.name}' is {_type(inp.type)}, the data is float32 {data}; export "
            "the teacher with a float32 input (skl2onnx: to_onnx(model, X.astype(numpy.float32)))"
        )
    if dims is None or not sample:
        return False
    if isinstance(dims[0], int):
        raise KdxError(
            f"{name}: input '{inp.name}' {_shape(dims)} has a fixed batch of {dims[0]}; export "
            "the teacher with a free batch axis"
        )
    if len(dims) == 1 + len(sample) and all(
        not isinstance(d, int) or d == s for d, s in zip(dims[1:], sample, strict=True)
    ):
        return False
    flat = len(dims) == 2 and len(sample) > 1
    if flat and (not isinstance(dims[1], int) or dims[1] == math.prod(sample)):
        return True
    if len(sample) == 3 and dims[1:] == [sample[1], sample[2], sample[0]]:
        raise KdxError(
            f"{name}: input '{inp.name}' is channels-last {_shape(dims)} (NHWC), the data is "
            f"channels-first {data} (NCHW); export the teacher channels-first (tf2onnx: "
            f"--inputs-as-nchw {inp.name})"
        )
    raise KdxError(
        f"{name}: input '{inp.name}' takes float32 {_shape(dims)}, the data gives float32 {data}; "
        "give a teacher made for this data, or data of its shape (data.image_size, image_mode)"
    )


class OnnxModel(nn.Module):
    """An ONNX model run by ONNX Runtime on the CPU, as a module: a teacher from any framework.

    It returns the output ``output`` (default: the only float (batch, classes) one) as logits:
    ``output_kind`` says whether that output holds logits or probabilities (log taken), and
    ``auto`` is decided by ``resolve`` on data (or on the first batch it sees). ``sample_shape``:
    the data's (C, H, W), checked against the model's input. It has no parameters and cannot
    train; its outputs come back on the input's device.
    """

    def __init__(
        self,
        path: Path,
        output: str = "",
        output_kind: str = "auto",
        sample_shape: tuple | None = None,
    ):
        super().__init__()
        import onnx

        ort = import_onnxruntime(f"{path}: an ONNX teacher")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own types for bad files
            raise KdxError(f"{path}: ONNX Runtime cannot load it ({str(e)[:200]})") from None
        if output_kind not in KINDS:
            raise KdxError(f"teacher.output_kind '{output_kind}' must be one of {', '.join(KINDS)}")
        graph = onnx.load(str(path), load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        self.path, self.sample_shape = Path(path), tuple(sample_shape or ()) or None
        inputs = [i for i in graph.input if i.name not in weights]
        self.flatten = _flattens(self.path.name, inputs, self.sample_shape)
        self.input_name = inputs[0].name
        self.outputs = [o.name for o in graph.output]
        self.output_name = _choose_output(self.path.name, list(graph.output), output).name
        self.output_kind, self.reason = output_kind, "teacher.output_kind"

    def _raw(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        feed = {self.input_name: x.reshape(len(x), -1) if self.flatten else x}
        try:
            return np.asarray(self.session.run([self.output_name], feed)[0], dtype=np.float32)
        except Exception as e:  # ORT raises its own types; the model does not fit the data
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise KdxError(
                f"{self.path.name}: ONNX Runtime cannot run it on float32 {_shape(x.shape)}: {first}"
            ) from None

    def _decide(self, p: np.ndarray) -> None:
        """``auto``: probabilities when every row is non-negative and sums to 1."""
        probs = p.ndim == 2 and p.shape[1] > 1 and bool((p >= 0).all())
        probs = probs and bool(np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-3))
        self.output_kind = "probabilities" if probs else "logits"
        verdict = (
            "are non-negative and sum to 1" if probs else "are not all non-negative summing to 1"
        )
        self.reason = f"auto: its rows on {len(p)} samples {verdict}"

    def resolve(self, x: np.ndarray) -> str:
        """Decide ``output_kind = "auto"`` on the inputs ``x``; return the kind."""
        if self.output_kind == "auto":
            self._decide(self._raw(x))
        return self.output_kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self._raw(x.detach().float().cpu().numpy())
        if self.output_kind == "auto":
            self._decide(p)
        if self.output_kind == "probabilities":
            p = np.log(np.maximum(p, np.float32(EPS)))
        return torch.from_numpy(p).to(x.device)

    def describe(self) -> TeacherView:
        """What the teacher reads and how, for the teacher artifact's checks."""
        flat = None
        if self.flatten:
            flat = f"{_shape(['N', *self.sample_shape])} -> (N, {math.prod(self.sample_shape)})"
        return {
            "input": self.input_name,
            "input_flattened": flat,
            "outputs": self.outputs,
            "output": self.output_name,
            "output_kind": self.output_kind,
            "output_kind_from": self.reason,
        }

    def view_model(self):
        """The teacher's ONNX model answering exactly as ``forward`` does, as its one output:
        other outputs and the nodes only they need removed, the flattening and the log added;
        the model keeps its own opset and IR version."""
        import onnx

        if self.output_kind == "auto":  # a teacher artifact from before teacher.output_kind
            raise KdxError(
                f"{self.path}: whether it gives logits or probabilities is not recorded; run "
                "`kdexport train-teacher RUN --retrain`"
            )
        model = onnx.load(str(self.path))
        graph, taken = model.graph, _names(model.graph)
        out = onnx.ValueInfoProto()
        out.CopyFrom(next(o for o in graph.output if o.name == self.output_name))
        if self.output_kind == "probabilities":
            out.name = _log_clamped(model, out.name, taken)
        _replace(graph.output, [out])
        self._own_input(graph, taken)
        _prune(graph)
        return model

    def _own_input(self, graph, taken: set) -> None:
        """The input kdexport feeds its models, ``input`` of the data's shape, flattened into the
        model's own input or passed on to it (the INT8 calibration feeds ``input``)."""
        from onnx import TensorProto, helper

        old = next(i for i in graph.input if i.name == self.input_name)
        if old.name == "input" and not self.flatten:
            return
        dims = old.type.tensor_type.shape.dim
        shape = None
        if self.sample_shape:
            shape = [(dims[0].dim_param if dims else "") or "batch", *self.sample_shape]
        new = helper.make_tensor_value_info(_fresh(taken, "input"), TensorProto.FLOAT, shape)
        if self.flatten:  # Flatten (any opset) of (N, C, H, W) gives (N, C*H*W)
            node = helper.make_node("Flatten", [new.name], [old.name], axis=1)
        else:
            node = helper.make_node("Identity", [new.name], [old.name])
            new.type.CopyFrom(old.type)
        _replace(graph.input, [new if i.name == old.name else i for i in graph.input])
        _replace(graph.node, [node, *graph.node])


def summary(view: dict) -> str:
    """One line from ``OnnxModel.describe()``: the output read, as what, any input reshaping."""
    text = (
        f"reads output '{view['output']}' (of {', '.join(view['outputs'])}) as "
        f"{view['output_kind']} ({view['output_kind_from']})"
    )
    flat = view["input_flattened"]
    return text + (f"; input flattened {flat}" if flat else "")


def _log_clamped(model, name: str, taken: set) -> str:
    """Append log(max(p, EPS)) of the tensor ``name``; return the new output's name."""
    from onnx import TensorProto, helper

    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:  # a model of ai.onnx.ml ops alone: the default domain is added
        model.opset_import.append(helper.make_opsetid("", 17))
        model.ir_version = max(model.ir_version, 8)
    clamped, log = _fresh(taken, f"{name}_clamped"), _fresh(taken, f"log_{name}")
    if (versions or [17])[0] >= 8:  # Max broadcasts a scalar from opset 8 on
        eps = _fresh(taken, "eps")
        value = helper.make_tensor(eps, TensorProto.FLOAT, [], [EPS])
        nodes = [helper.make_node("Constant", [], [eps], value=value)]
        nodes.append(helper.make_node("Max", [name, eps], [clamped]))
    else:  # Clip takes its bounds as attributes before opset 11
        nodes = [helper.make_node("Clip", [name], [clamped], min=EPS)]
    model.graph.node.extend([*nodes, helper.make_node("Log", [clamped], [log])])
    return log


def _names(graph) -> set:
    """Every value name a graph uses (its subgraphs included)."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.input, node.output)
        for sub in _subgraphs(node):
            names |= _names(sub)
    return names


def _fresh(taken: set, base: str) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _subgraphs(node) -> list:
    from onnx import AttributeProto

    graphs = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    return graphs


def _replace(field, items) -> None:
    """Set a repeated protobuf field to (copies of) ``items``."""
    copies = []
    for item in items:
        copy = type(item)()
        copy.CopyFrom(item)
        copies.append(copy)
    del field[:]
    field.extend(copies)


def _prune(graph) -> None:
    """Keep only the nodes, initializers and inputs the graph's outputs need (OpenVINO, for one,
    refuses a model with an op it lacks even where no output needs it)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            for sub in _subgraphs(node):  # a subgraph may read any value of the outer graph
                needed |= _names(sub)
    weights = {t.name for t in graph.initializer}
    _replace(graph.node, reversed(kept))
    _replace(graph.initializer, [t for t in graph.initializer if t.name in needed])
    _replace(graph.input, [i for i in graph.input if i.name in needed or i.name not in weights])
    _replace(graph.value_info, [v for v in graph.value_info if v.name in needed])
