"""Parity checks fail when they should: a deliberately altered model must be caught."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kdexport import export as export_module
from kdexport.artifact import MANIFEST, file_table, write_json
from kdexport.compile import compile_targets
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.evaluate import parity
from kdexport.export import export
from kdexport.pipeline import load_recipe as load


def _perturb(path, scale=1e-2):
    """Add ``scale`` to the largest initializer: a model that runs but answers differently."""
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + scale, init.name))
    onnx.save(model, str(path))


def test_parity_figures():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ok = parity(ref + 5e-5, ref, 1e-4)
    assert ok["passed"] and ok["top1_agreement"] == 1.0
    bad = parity(ref + 2e-4, ref, 1e-4)
    assert not bad["passed"] and "max abs diff 0.0002" in bad["summary"]
    flipped = parity(ref[::-1].copy(), ref, 10.0)
    assert not flipped["passed"] and flipped["top1_agreement"] == 0.0
    assert not parity(ref * np.nan, ref, 1.0)["passed"]


def test_parity_bound_scales_with_the_reference():
    """numpy's allclose convention: |a - b| <= atol + rtol·|b|, element by element."""
    ref = np.array([[20.0, -3.0, 0.01], [0.5, 10.0, -0.02]])
    actual = ref + np.array([[0.2, 0.04, 0.01], [0.015, -0.1, 0.0]])
    check = parity(actual, ref, atol=0.02, rtol=0.01)
    # bounds: [[0.22, 0.05, 0.0201], [0.025, 0.12, 0.0202]]: every element within
    assert check["passed"] and check["frac_out_of_bound"] == 0.0
    assert np.allclose(actual, ref, atol=0.02, rtol=0.01)
    assert check["max_abs_diff"] == pytest.approx(0.2)
    assert check["worst_element"] == {"index": [0, 0], "actual": 20.2, "reference": 20.0}
    assert check["max_rel_diff"] == pytest.approx(1.0)  # 0.01 off a reference of 0.01
    tight = parity(actual, ref, atol=0.02, rtol=0.0)  # an absolute bound alone: 3 of 6 beyond
    assert not tight["passed"] and tight["frac_out_of_bound"] == pytest.approx(0.5)
    assert "50.00% of elements beyond atol 0.02" in tight["summary"]
    low = parity(ref, ref, atol=1.0, rtol=0.0, min_agreement=None)
    assert low["passed"] and low["min_agreement"] is None


@pytest.mark.backends
def test_export_catches_an_altered_export(run_copy, monkeypatch):
    real = export_module._torch_export

    def altered(model, example, path, opset, **kwargs):
        exporter = real(model, example, path, opset, **kwargs)
        _perturb(path)
        return exporter

    monkeypatch.setattr(export_module, "_torch_export", altered)
    before = (run_copy / "export" / MANIFEST).read_bytes()
    r = load(run_copy / "recipe.toml")
    with pytest.raises(
        KdxError, match=r"teacher.onnx at batch 1 differs from PyTorch: max abs diff"
    ):
        export(Run(run_copy, r["data"]), **r["export"])
    assert (run_copy / "export" / MANIFEST).read_bytes() == before  # the old export is intact


@pytest.mark.backends
def test_compile_catches_a_model_that_drifted_from_pytorch(run_copy):
    exported = run_copy / "export"
    _perturb(exported / "student.onnx", scale=1e-3)
    # Pretend the bad bytes were what the exporter wrote: checksums match, parity must not.
    manifest = __import__("json").loads((exported / MANIFEST).read_text())
    manifest["files"] = file_table(exported)
    write_json(exported / MANIFEST, manifest)
    (run_copy / "compile").rename(run_copy / "old-compile")
    with pytest.raises(
        KdxError, match=r"ort-cpu/student.onnx differs from PyTorch: max abs diff .* top-1"
    ):
        compile_targets(Run(run_copy), targets=["ort-cpu"], skip_unavailable=False)
    assert not (run_copy / "compile").exists()
