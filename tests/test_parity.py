"""Parity checks fail when they should: a deliberately altered model must be caught."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kdexport import export as export_module
from kdexport.artifact import MANIFEST, file_table, write_json
from kdexport.compile import compile
from kdexport.errors import KdxError
from kdexport.evaluate import parity
from kdexport.export import export
from kdexport.recipe import load


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
        export(run_copy, r["data"], **r["export"])
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
        compile(run_copy, targets=["ort-cpu"], skip_unavailable=False)
    assert not (run_copy / "compile").exists()
