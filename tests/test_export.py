"""Export details: static variant, any checkpoint, external data, the exported graph holds only
the student, and ONNX files that are corrupt or unsafe are refused."""

import json

import numpy as np
import onnx
import pytest
import torch

from kdexport.artifact import Artifact
from kdexport.compile import compile_targets
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.export import export, export_onnx
from kdexport.onnxfile import check_onnx_file, make_model
from kdexport.pipeline import load_recipe as load


def _export(run, **overrides):
    r = load(run / "recipe.toml")
    return export(Run(run, r["data"]), **{**r["export"], **overrides})


@pytest.mark.backends
def test_export_records_how_it_was_made(fast_cli_run):
    checks = Artifact.open(fast_cli_run[0] / "export", "export", "").checks
    for model in ("teacher", "student"):
        assert checks[model]["exporter"] in ("dynamo", "torchscript")
        assert checks[model]["opset"] == 18 and checks[model]["ir_version"] > 0
        assert set(checks[model]["batch_check_max_abs_diff"]) == {"1", "4", "9"}
    assert {"torch", "onnx", "onnxscript"} <= set(checks["versions"])


def test_only_the_student_goes_out(fast_cli_run):
    model = onnx.load(str(fast_cli_run[0] / "export" / "student.onnx"))
    stored = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    params = Artifact.open(fast_cli_run[0] / "export", "export", "").checks["student"]["params"]
    assert stored <= params + 100  # BatchNorm statistics may be folded; no teacher weights
    assert not any("adapter" in t.name or "teacher" in t.name for t in model.graph.initializer)


@pytest.mark.backends
def test_static_variant_and_opset(run_copy):
    art = _export(run_copy, static=True, static_batch=2, opset=17)
    static = art.checks["student"]["static"]
    assert static["batch"] == 2 and static["parity"]["passed"]
    facts = check_onnx_file(art.file("student-static.onnx"))
    assert facts["inputs"][0]["shape"][0] == 2 and facts["opset"] == 17
    assert "teacher-static.onnx" not in art.manifest["files"]


def test_export_from_another_checkpoint(run_copy, tmp_path):
    state = torch.load(run_copy / "student" / "model.pt", weights_only=True)
    zeroed = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(zeroed, tmp_path / "epoch0.pt")
    art = _export(run_copy, student_checkpoint=str(tmp_path / "epoch0.pt"))
    with np.load(art.file("io_sample.npz")) as f:
        assert np.allclose(f["student"], 0.0)


@pytest.mark.backends
def test_external_data_is_listed_and_compiles(run_copy):
    art = _export(run_copy, external_data_mb=0)
    assert "student.onnx.data" in art.manifest["files"]
    assert check_onnx_file(art.file("student.onnx"))["external_data"] == ["student.onnx.data"]
    compiled = compile_targets(
        Run(run_copy), targets=["ort-cpu", "openvino-cpu"], skip_unavailable=False
    )
    assert compiled.checks["targets"]["openvino-cpu"]["student"]["parity"]["passed"]


@pytest.mark.backends
def test_unsupported_op_is_named(tmp_path):
    class Eig(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x[:, 0]).real

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), Eig()).eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    opts = {"opset": 18, "example_batch": 4, "tolerance": 1e-4, "external_data_mb": 1800}
    with pytest.raises(KdxError, match=r"op aten\.linalg_eig\w* in module '1' \(Eig\)"):
        export_onnx(model, tmp_path / "m.onnx", torch.from_numpy(x), x, opts, {})


def _external_model(tmp_path, location):
    t = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    node = onnx.helper.make_node("Add", ["x", "w"], ["y"])
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = onnx.helper.make_graph([node], "g", [vi[0]], [vi[1]], [t])
    path = tmp_path / "m.onnx"
    onnx.save(make_model(graph), str(path))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable ONNX model"),
        (b"this is not onnx at all", "not a readable ONNX model"),
        (None, "no such ONNX file"),
    ],
)
def test_bad_onnx_files(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KdxError, match=message):
        check_onnx_file(path)


def test_truncated_onnx(fast_cli_run, tmp_path):
    data = (fast_cli_run[0] / "export" / "teacher.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        KdxError, match="t.onnx: (not a readable ONNX model|fails the ONNX checker)"
    ):
        check_onnx_file(tmp_path / "t.onnx")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4)
    sub = tmp_path / "model"
    sub.mkdir()
    with pytest.raises(KdxError, match="points outside"):
        check_onnx_file(_external_model(sub, location))


@pytest.mark.backends
def test_metadata(fast_cli_run):
    model = onnx.load(str(fast_cli_run[0] / "export" / "teacher.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["role"] == "teacher" and json.loads(meta["preprocessing"])["layout"] == "NCHW"
    assert meta["kdexport_version"]


@pytest.mark.backends
def test_onnx_teacher_is_copied_not_exported(fast_cli_run, tmp_path):
    from conftest import FAST

    from kdexport.pipeline import distill_and_export

    teacher = fast_cli_run[0] / "export" / "teacher.onnx"
    sets = [*FAST, f"teacher.model={teacher}", "teacher.epochs=0", "compile.targets=['ort-cpu']"]
    figs = distill_and_export(tmp_path / "run", overrides=sets)
    assert figs["exporters"]["teacher"] == "copied" and figs["ideal_speedup"] is None
    assert (
        figs["targets"]["ort-cpu"]["teacher"]["params"]
        > 100 * figs["targets"]["ort-cpu"]["student"]["params"]
    )
