"""Teachers from other frameworks (issue 12): a scikit-learn classifier converted by skl2onnx
teaches through the whole pipeline; an ONNX teacher's output is chosen (``teacher.output``) and
read as logits or probabilities (``teacher.output_kind``); ZipMap outputs and inputs that do not
fit the data are refused in one line before any training."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from conftest import FAST_ARGS, fails, kdx
from onnx import TensorProto, helper, numpy_helper

from kdexport.context import Run
from kdexport.losses import KDLoss
from kdexport.onnx_teacher import EPS, OnnxModel
from kdexport.onnxfile import check_onnx_file, make_model, run_reference
from kdexport.pipeline import load_recipe
from kdexport.teacher import load_teacher, teacher_identity, train_teacher

DIGITS = (1, 8, 8)  # kdexport's digits samples; scikit-learn models take them as 64 floats


def _sets(*sets: str) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def sk(tmp_path_factory):
    """An MLPClassifier on the digits (scaled as kdexport scales them) converted three ways."""
    skl2onnx = pytest.importorskip("skl2onnx")  # in the test extra
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    root = tmp_path_factory.mktemp("sklearn")
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence: a few iterations are enough here
        model = MLPClassifier((16,), max_iter=60, random_state=0).fit(x, y)
    files = {
        "plain": ({"zipmap": False}, x),
        "zipmap": (None, x),  # skl2onnx's default: probabilities as a sequence of maps
        "double": ({"zipmap": False}, x.astype(np.float64)),
    }
    paths = {}
    for name, (options, sample) in files.items():
        paths[name] = root / f"{name}.onnx"
        onx = skl2onnx.to_onnx(model, sample[:1], options=options, target_opset=17)
        paths[name].write_bytes(onx.SerializeToString())
    return model, x, paths


def _linear(
    path, outputs=("scores", "probs", "label"), shape=("N", *DIGITS), opset=17, ir=8, classes=10
):
    """A hand-built classifier: scores = flat(x)·W + b, probs = softmax(scores), label = argmax
    (scores small enough that no probability is clamped)."""
    rng = np.random.default_rng(0)
    features = int(np.prod(shape[1:]))
    w = numpy_helper.from_array(rng.normal(0, 0.3, (features, classes)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 1, (classes,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1),
    ]
    kinds = {n: (TensorProto.FLOAT, ["N", classes]) for n in ("scores", "probs")}
    kinds["label"] = (TensorProto.INT64, ["N", 1])
    outs = [helper.make_tensor_value_info(n, *kinds[n]) for n in outputs]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    if ir < 4:  # initializers were graph inputs too before IR 4
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in (w, b)]
    graph = helper.make_graph(nodes, "linear", inputs, outs, [w, b])
    onnx.save(make_model(graph, opset=opset, ir_version=ir), str(path))
    return path


def test_sklearn_teacher_end_to_end(sk, tmp_path):
    """distill-and-export with an MLPClassifier teacher: the probabilities output is chosen and
    read as probabilities, the images flattened; the shipped teacher.onnx gives log p, and both
    CPU runtimes reproduce it (fp32 parity)."""
    model, x, paths = sk
    sets = _sets(
        f"teacher.model={paths['plain']}",
        "teacher.epochs=0",
        "distill.student=zoo:mlp-tiny",
        "distill.epochs=1",
        'compile.targets=["ort-cpu", "openvino-cpu"]',
        "benchmark.batch_sizes=[1]",
    )
    run = tmp_path / "run"
    result = kdx("distill-and-export", "--out", run, *FAST_ARGS, *sets, "--json")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    teacher = json.loads((run / "teacher" / "manifest.json").read_text())["checks"]
    view = teacher["onnx_teacher"]
    assert (view["output"], view["output_kind"]) == ("probabilities", "probabilities")
    assert view["outputs"] == ["label", "probabilities"]
    assert view["input_flattened"] == "(N, 1, 8, 8) -> (N, 64)"
    assert teacher["test_accuracy"] > 0.9
    for target in ("ort-cpu", "openvino-cpu"):
        assert figures["targets"][target]["teacher"]["max_abs_diff"] <= 1e-4
    shipped = run / "export" / "teacher.onnx"
    facts = check_onnx_file(shipped)
    assert [o["name"] for o in facts["outputs"]] == ["log_probabilities"]
    assert facts["inputs"][0]["shape"][1:] == list(DIGITS)
    assert (facts["opset"], facts["ir_version"]) == (17, onnx.load(str(paths["plain"])).ir_version)
    images = x[:50].reshape(-1, *DIGITS)
    expected = np.log(np.maximum(model.predict_proba(x[:50]), EPS))
    np.testing.assert_allclose(run_reference(shipped, images), expected, atol=1e-4)
    # An INT8 target may or may not take the teacher; it never crashes (ORT's quantizer fails on
    # skl2onnx's 2-D biases in onnxruntime 1.32: one line naming the target).
    result = kdx("compile", run, *_sets('compile.targets=["ort-cpu-int8"]'), code=None)
    if result.exit_code:
        fails("compile", run, *_sets('compile.targets=["ort-cpu-int8"]'), message="ort-cpu-int8")


def test_the_chosen_output_is_said(sk, tmp_path):
    _, _, paths = sk
    out = kdx(
        "train-teacher",
        tmp_path / "run",
        *_sets(f"teacher.model={paths['plain']}", "teacher.epochs=0"),
    ).stdout
    assert "reads output 'probabilities' (of label, probabilities) as probabilities (auto:" in out
    assert "input flattened (N, 1, 8, 8) -> (N, 64)" in out


def test_probabilities_teach_as_logits_do(tmp_path):
    """The same classifier read from its scores (logits) and from its softmax (probabilities,
    log taken): the teachers agree up to a constant per row, so KD at any T is the same."""
    path = _linear(tmp_path / "t.onnx", outputs=("scores", "probs"))
    r = load_recipe(overrides=["teacher.epochs=0", f"teacher.model={path}"])
    arts = {}
    for output in ("scores", "probs"):
        teacher = {**r["teacher"], "output": output}
        arts[output] = train_teacher(Run(tmp_path / output, r["data"]), **teacher)
    assert arts["scores"].checks["onnx_teacher"]["output_kind"] == "logits"
    assert arts["probs"].checks["onnx_teacher"]["output_kind"] == "probabilities"
    assert "sum to 1" in arts["probs"].checks["onnx_teacher"]["output_kind_from"]
    assert teacher_identity(arts["scores"]) != teacher_identity(arts["probs"])  # not one cache
    x = torch.rand(32, *DIGITS)
    logits, log_p = (load_teacher(Run(tmp_path / o, r["data"]))[0](x) for o in ("scores", "probs"))
    torch.testing.assert_close(log_p, torch.log_softmax(logits, 1).clamp_min(np.log(EPS)))
    student = torch.randn(32, 10)
    for t in (1.0, 4.0):
        kd = KDLoss(t)
        torch.testing.assert_close(
            kd(student, log_p, None), kd(student, logits, None), atol=1e-4, rtol=1e-4
        )
    forced = train_teacher(Run(tmp_path / "f", r["data"]), **{**teacher, "output_kind": "logits"})
    assert forced.checks["onnx_teacher"]["output_kind"] == "logits"  # as set, not detected


@pytest.mark.parametrize(("opset", "ir"), [(17, 8), (7, 3)])
def test_the_shipped_teacher_answers_as_it_taught(tmp_path, opset, ir):
    """view_model: one output, the log of the clamped probabilities (Max from opset 8, Clip's
    attribute before), on the data's input, in the model's own opset and IR version."""
    path = _linear(tmp_path / "t.onnx", shape=("N", 64), opset=opset, ir=ir)
    teacher = OnnxModel(path, output="probs", sample_shape=DIGITS)
    x = np.random.default_rng(1).random((16, *DIGITS), dtype=np.float32)
    assert teacher.resolve(x) == "probabilities"
    onnx.save(teacher.view_model(), str(tmp_path / "view.onnx"))
    facts = check_onnx_file(tmp_path / "view.onnx")
    assert (facts["opset"], facts["ir_version"]) == (opset, ir)
    assert facts["inputs"][0]["name"] == "input"  # IR 3 lists the weights as inputs too
    assert len(facts["outputs"]) == 1
    ours = teacher(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_reference(tmp_path / "view.onnx", x), ours, atol=1e-5)
    assert ours.min() >= np.log(np.float32(EPS)) - 1e-6  # clamped: no -inf from a zero


def _nhwc(t):
    return _linear(t / "nhwc.onnx", shape=("N", 8, 8, 1))


def _two_inputs(t):
    path = _linear(t / "two.onnx")
    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1]))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("make", "sets", "message"),
    [
        (
            lambda t, p: p["zipmap"],
            [],
            "output 'output_probability' is a sequence of maps (ZipMap), not a tensor of class "
            "scores; convert the classifier without ZipMap (skl2onnx: to_onnx(model, X, "
            "options={'zipmap': False}))",
        ),
        (
            lambda t, p: p["zipmap"],
            ["teacher.output='output_probability'"],
            "is a sequence of maps (ZipMap)",
        ),
        (
            lambda t, p: p["double"],
            [],
            "input 'X' is float64 (N, 64), the data is float32 (N, 1, 8, 8); export the teacher "
            "with a float32 input",
        ),
        (
            lambda t, p: _nhwc(t),
            [],
            "input 'x' is channels-last (N, 8, 8, 1) (NHWC), the data is channels-first "
            "(N, 1, 8, 8) (NCHW); export the teacher channels-first",
        ),
        (
            lambda t, p: _linear(t / "big.onnx", shape=("N", 3, 32, 32)),
            [],
            "input 'x' takes float32 (N, 3, 32, 32), the data gives float32 (N, 1, 8, 8)",
        ),
        (
            lambda t, p: _linear(t / "flat.onnx", shape=("N", 100)),
            [],
            "takes float32 (N, 100), the data gives float32 (N, 1, 8, 8)",
        ),
        (lambda t, p: _two_inputs(t), [], "takes 2 inputs ('x' float32 (N, 1, 8, 8), 'mask'"),
        (
            lambda t, p: _linear(t / "t.onnx", outputs=("label", "scores", "probs")),
            [],
            "has 2 outputs that may hold class scores ('scores' float32 (N, 10), 'probs' "
            "float32 (N, 10)); set teacher.output to the one that does",
        ),
        (
            lambda t, p: _linear(t / "t.onnx"),
            ["teacher.output='label'"],
            "teacher.output 'label' is int64 (N, 1), not float32 class scores",
        ),
        (
            lambda t, p: _linear(t / "t.onnx"),
            ["teacher.output='logit'"],
            "teacher.output 'logit' is not an output of t.onnx; its outputs: 'scores'",
        ),
        (
            lambda t, p: _linear(t / "t.onnx", outputs=("label",)),
            [],
            "has no float32 (batch, classes) output to learn from",
        ),
        (
            lambda t, p: _linear(t / "t.onnx", outputs=("scores", "label"), classes=3),
            [],
            "teacher outputs (4, 3), student (4, 10); both need 10 classes (the ONNX teacher's "
            "output 'scores'; teacher.output names another of scores, label)",
        ),
        (
            lambda t, p: "zoo:mlp-tiny",
            ["teacher.output_kind='probabilities'"],
            "teacher.output and teacher.output_kind apply to ONNX teachers",
        ),
    ],
    ids=[
        "zipmap",
        "zipmap-named",
        "double",
        "nhwc",
        "other-shape",
        "other-size",
        "two-inputs",
        "two-candidates",
        "label-named",
        "no-such-output",
        "no-scores",
        "three-classes",
        "not-onnx",
    ],
)
def test_foreign_teachers_refused_before_training(sk, tmp_path, make, sets, message):
    model = make(tmp_path, sk[2])
    epochs = "teacher.epochs=0" if str(model).endswith(".onnx") else "teacher.epochs=1"
    args = _sets(f"teacher.model={model}", epochs, "distill.student=zoo:mlp-tiny", *sets)
    fails("distill-and-export", "--out", tmp_path / "run", *args, message=message)
    assert not (tmp_path / "run" / "teacher").exists()
