"""Conformance: ONNX files of other eras and producers (tests/conformance/corpus.py) through
``kdexport benchmark``, the backends' compile, load and run, the input options, and
``kdexport package`` with the bundle's own ``run.py verify``.

Each file runs or is refused in one line naming what is at fault; never an "unexpected" error.
The two big real models: only ResNet-50 (the issue's file) on ort-cpu here; the rest run in
tools/check_conformance.py.
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
from conformance.corpus import DATA, TARGETS, cases
from conftest import fails, kdx

from kdexport.backends import backend
from kdexport.backends.profiles import load_target
from kdexport.errors import KdxError
from kdexport.feeds import parse_shapes, resolve
from kdexport.onnxfile import check_onnx_file

CASES = {c.name: c for c in cases()}
RUN = [
    (c.name, t)
    for c in CASES.values()
    for t in TARGETS
    if not c.big or (c.name == "light_resnet50.onnx" and t == "ort-cpu")
]


@pytest.mark.parametrize(("name", "target"), RUN, ids=[f"{n}-{t}" for n, t in RUN])
def test_benchmark_runs_or_refuses_in_one_line(tmp_path, name, target):
    case = CASES[name]
    path = case.build(tmp_path)
    args = ["benchmark", path, "--target", target, "--quick", *case.args]
    before = sorted(tmp_path.rglob("*"))
    if target in case.refused:
        fails(*args, message=case.refused[target])
        assert sorted(tmp_path.rglob("*")) == before  # nothing half-written
    else:
        out = kdx(*args).stdout
        assert f"{target} model batch" in out


def run_py_verify(root, capsys) -> dict:
    """``python run.py verify --json`` in this process, with the bundle's own copy of run.py."""
    spec = importlib.util.spec_from_file_location("bundle_run_py", root / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    assert module.main(["verify", "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", list(CASES))
def test_package_bundles_what_ran_on_ort_cpu_or_refuses_in_one_line(tmp_path, capsys, name):
    """Every file that runs on ONNX Runtime's CPU is bundled and verifies on the device side; the
    others are refused with the text benchmark gives (its reference run is ONNX Runtime's)."""
    case = CASES[name]
    path = case.build(tmp_path)
    args = ["package", path, "--dir", tmp_path / "bundle", *case.args]
    if "ort-cpu" in case.refused:
        before = sorted(tmp_path.rglob("*"))
        fails(*args, message=case.refused["ort-cpu"])
        assert sorted(tmp_path.rglob("*")) == before
        return
    kdx(*args)
    report = run_py_verify(tmp_path / "bundle", capsys)
    (golden,) = report["golden"].values()
    assert golden["outputs"] >= 1 and golden["max_abs_diff"] <= golden["tolerance"] + 1e-6
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["source"] == "onnx-file" and manifest["models"]["student"]["inputs"]


def test_the_corpus_holds_the_real_model_zoo_files():
    if not (DATA / "light" / "light_resnet50.onnx").is_file():
        pytest.skip("this onnx build ships no backend test data")
    facts = check_onnx_file(DATA / "light" / "light_resnet50.onnx")
    assert (facts["ir_version"], facts["opset"]) == (3, 9)
    assert [i["name"] for i in facts["inputs"]] == ["gpu_0/data_0"]  # 269 weights left out


@pytest.mark.parametrize("name", ["text", "fp16", "external-data", "opset7-ir3", "fixed-batch-4"])
@pytest.mark.parametrize("target", TARGETS)
def test_backends_compile_load_and_run(tmp_path, name, target):
    case = CASES[name]
    path = case.build(tmp_path)
    inputs = resolve(check_onnx_file(path), parse_shapes(case.args[1::2]), path.name)
    profile = load_target(target)
    module = backend(profile.backend, profile.name)
    (tmp_path / "out").mkdir()
    runner = module.load(module.compile(path, tmp_path / "out", "m", profile), profile)
    feed = inputs.feed(2)
    out = runner.run(feed)
    runner.bind(feed)()
    assert np.isfinite(out.astype(np.float32)).all()
    if len(feed) == 1:  # old callers pass one array for the first input
        np.testing.assert_allclose(runner.run(next(iter(feed.values()))), out, rtol=1e-3)


def test_random_inputs_per_dtype(tmp_path):
    facts = check_onnx_file(CASES["text"].build(tmp_path))
    feed = resolve(facts, parse_shapes(["input_ids=3,5"]), "text.onnx").feed(3)
    assert {n: (a.dtype.name, a.shape) for n, a in feed.items()} == {
        "input_ids": ("int64", (3, 5)),
        "mask": ("bool", (3, 5)),
        "scale": ("float32", (3, 1)),
    }
    assert set(np.unique(feed["input_ids"])) <= {0, 1}


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (["1,16"], "text.onnx has 3 inputs (input_ids, mask, scale): give one --shape NAME=DIMS"),
        (["ids=1,16"], "--shape names 'ids', which is not an input of text.onnx"),
        (["input_ids=1,16", "mask=1,8"], "--shape gives axis 'seq' 16 and 8"),
        (["scale=1,2"], "axis 1 = 2 but text.onnx fixes it at 1"),
        (["input_ids=1,x"], "give sizes >= 1 separated by commas"),
        (["input_ids=1,16", "input_ids=1,16"], "--shape is given twice for input_ids"),
    ],
)
def test_shape_mistakes_are_one_line(tmp_path, shapes, message):
    facts = check_onnx_file(CASES["text"].build(tmp_path))
    with pytest.raises(KdxError, match=re.escape(message)):
        resolve(facts, parse_shapes(shapes), "text.onnx")


def test_a_model_without_batch_axis_refuses_batch_sizes(tmp_path):
    path = CASES["no-batch-axis"].build(tmp_path)
    fails("benchmark", path, "--quick", "--batch-sizes", "4", message="has no batch axis")
