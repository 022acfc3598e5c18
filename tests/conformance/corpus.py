"""The conformance corpus: ONNX files of other eras and producers, and what kdexport does with each.

Real model-zoo files come from the onnx package's own test data (found through ``onnx.__file__``;
left out if this onnx build lacks them); the rest are built here with ``onnx.helper``. Each case
says, per target, that the file runs (None) or is refused in one line holding a given text.
Used by tests/test_conformance.py and tools/check_conformance.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kdexport.onnxfile import make_model

TARGETS = ("ort-cpu", "openvino-cpu")
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
F, I64, BOOL, F16 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT16


@dataclass
class Case:
    name: str
    build: Callable[[Path], Path]  # writes the model into a folder, returns its path
    what: str  # what it covers
    args: list[str] = field(default_factory=list)  # extra benchmark arguments (--shape)
    refused: dict[str, str] = field(default_factory=dict)  # target -> text of the one line
    big: bool = False  # a real model of 100 MB and more once its weights are folded


def _real(rel: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return shutil.copy(DATA / rel, folder / Path(rel).name.replace("model.onnx", "m.onnx"))

    return build


def _save(folder: Path, name: str, model, external: bool = False) -> Path:
    path = folder / f"{name}.onnx"
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{name}.data",
                  size_threshold=0)  # fmt: skip
    else:
        onnx.save(model, str(path))
    return path


def _conv(opset: int, ir: int, shape=("N", 3, 8, 8), dtype=F) -> Callable[[Path], Path]:
    """Conv + Add + Relu; below IR 4 the weights are also graph inputs, as IR 3 requires."""

    def build(folder: Path) -> Path:
        rng = np.random.default_rng(0)
        weights = [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "c"),
        ]
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "c"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ]
        inputs = [helper.make_tensor_value_info("x", dtype, list(shape))]
        if ir < 4:
            inputs += [helper.make_tensor_value_info(t.name, F, t.dims) for t in weights]
        out = [helper.make_tensor_value_info("y", F, [shape[0], 4, shape[2] - 2, shape[3] - 2])]
        graph = helper.make_graph(nodes, "conv", inputs, out, weights)
        return _save(folder, f"conv_ir{ir}_opset{opset}", make_model(graph, opset, ir))

    return build


def _one_op(name, op, in_shape, out_shape, dtype=F, domain="", opset=17, ir=8, external=False):
    def build(folder: Path) -> Path:
        node = helper.make_node(op, ["x"], ["y"], domain=domain)
        graph = helper.make_graph(
            [node],
            name,
            [helper.make_tensor_value_info("x", dtype, in_shape)],
            [helper.make_tensor_value_info("y", dtype, out_shape)],
        )
        model = make_model(graph, opset, ir)
        if domain:
            model.opset_import.append(helper.make_opsetid(domain, 1))
        return _save(folder, name, model, external)

    return build


def _matmul_external(folder: Path) -> Path:
    w = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", F, ["N", 64])],
        [helper.make_tensor_value_info("y", F, ["N", 64])],
        [w],
    )
    return _save(folder, "external", make_model(graph), external=True)


def _text_model(folder: Path) -> Path:
    """Token ids (int64), a mask (bool) and a scale (float): ``batch`` and ``seq`` symbolic."""
    emb = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(2, 8), "emb")
    axes = [
        numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("a2", [2]), ("a1", [1]))
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Cast", ["mask"], ["m"], to=F),
        helper.make_node("Unsqueeze", ["m", "a2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "a1"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "scale"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", I64, ["batch", "seq"]),
        helper.make_tensor_value_info("mask", BOOL, ["batch", "seq"]),
        helper.make_tensor_value_info("scale", F, ["batch", 1]),
    ]
    out = [helper.make_tensor_value_info("y", F, ["batch", 8])]
    graph = helper.make_graph(nodes, "text", inputs, out, [emb, *axes])
    return _save(folder, "text", make_model(graph))


def _versions() -> list[Case]:
    """Opset 7 to the newest this onnx knows, each at the lowest IR version that carries it."""
    ir_of: dict[int, int] = {}
    for _release, ir, opset, *_ in helper.VERSION_TABLE:
        ir_of.setdefault(opset, ir)
    newest = onnx.defs.onnx_opset_version()
    cases = [
        Case(f"opset{o}-ir{ir_of[o]}", _conv(o, ir_of[o]), f"IR {ir_of[o]}, opset {o}")
        for o in range(7, newest + 1)
    ]
    too_new = {t: f"opset {newest + 1}, newer than this onnx" for t in TARGETS}
    ir_new = {t: f"IR version {onnx.IR_VERSION + 1}, newer than" for t in TARGETS}
    return [
        *cases,
        Case(
            "opset-too-new", _conv(newest + 1, onnx.IR_VERSION), "unreleased opset", refused=too_new
        ),
        Case("ir-too-new", _conv(newest, onnx.IR_VERSION + 1), "unreleased IR", refused=ir_new),
    ]


def _built() -> list[Case]:
    seq = "axis 1 ('seq') is symbolic"
    return [
        *_versions(),
        Case("text", _text_model, "int64, bool, float inputs", ["--shape", "input_ids=1,16"]),
        Case(
            "text-per-input",
            _text_model,
            "--shape per input",
            ["--shape", "input_ids=2,16", "--shape", "mask=2,16", "--shape", "scale=2,1"],
        ),
        Case("text-no-shape", _text_model, "seq not given", refused=dict.fromkeys(TARGETS, seq)),
        Case("fp16", _one_op("fp16", "Sigmoid", ["N", 8], ["N", 8], F16), "float16 input"),
        Case("external-data", _matmul_external, "weights in external data"),
        Case(
            "det-ort-only",
            _one_op("det", "Det", ["N", 3, 3], ["N"]),
            "op ONNX Runtime has, OpenVINO not",
            refused={"openvino-cpu": "Det-17"},
        ),
        Case(
            "swish-openvino-only",
            _one_op("swish", "Swish", ["N", 8], ["N", 8], domain="org.openvinotoolkit"),
            "op OpenVINO has, ONNX Runtime not",
            refused={"ort-cpu": "Swish(-1) is not a registered function/op"},
        ),
        Case("no-batch-axis", _one_op("nobatch", "Relu", [16], [16]), "fixed rank-1 input"),
        Case("fixed-batch-4", _conv(17, 8, (4, 3, 8, 8)), "batch fixed at 4"),
        Case("unnamed-dims", _one_op("unnamed", "Relu", [None, 8], [None, 8]), "unnamed batch"),
    ]


_REAL = [
    # (file under onnx's test data, what it covers, refusals, big)
    ("light/light_resnet50.onnx", "ResNet-50, IR 3 opset 9, weights as inputs", {}, True),
    ("light/light_squeezenet.onnx", "SqueezeNet, IR 3 opset 9, onnx-caffe2", {}, False),
    ("light/light_shufflenet.onnx", "ShuffleNet, IR 3 opset 9", {}, False),
    ("light/light_inception_v1.onnx", "Inception v1, IR 3 opset 9", {}, True),
    ("pytorch-converted/test_Conv2d/model.onnx", "IR 3 opset 6, batch fixed at 2", {}, False),
    ("pytorch-converted/test_Embedding/model.onnx", "IR 3 opset 6, int64 input", {}, False),
    ("pytorch-operator/test_operator_repeat/model.onnx", "IR 3 opset 9, PyTorch", {}, False),
    (
        "pytorch-operator/test_operator_add_broadcast/model.onnx",
        "IR 3 opset 6 Add: OpenVINO only",
        {"ort-cpu": "Could not find an implementation for Add(6)"},
        False,
    ),
    ("simple/test_shrink/model.onnx", "IR 5 opset 10", {}, False),
    (
        "simple/test_strnorm_model_monday_casesensintive_lower/model.onnx",
        "string input",
        dict.fromkeys(TARGETS, "input 'x' of m.onnx is string"),
        False,
    ),
]


def cases() -> list[Case]:
    """Every case: the real files this onnx build ships, then the built ones."""
    real = [
        Case(
            rel.split("/")[-2 if rel.endswith("model.onnx") else -1], _real(rel), what, [], ref, big
        )
        for rel, what, ref, big in _REAL
        if (DATA / rel).is_file()
    ]
    return real + _built()
