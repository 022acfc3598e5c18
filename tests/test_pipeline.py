"""The pipeline end to end on real ONNX Runtime and OpenVINO: CLI, stages alone, Python API."""

import json

import pytest
from conftest import FAST, FAST_ARGS, kdx

from kdexport.artifact import sha256

MODEL_KEYS = {
    "accuracy",
    "max_abs_diff",
    "top1_agreement",
    "p50_ms",
    "p90_ms",
    "params",
    "flops",
    "size_bytes",
}


@pytest.mark.backends
def test_distill_and_export_json(fast_cli_run):
    out, figs = fast_cli_run
    assert {"ort-cpu", "openvino-cpu", "ort-cpu-int8", "openvino-cpu-int8"} <= set(figs["targets"])
    assert "ort-cuda" in figs["targets"] or "ort-cuda" in figs["skipped_targets"]
    for name, entry in figs["targets"].items():
        for model in ("teacher", "student"):
            f = entry[model]
            assert 0 <= f["accuracy"] <= 1
            assert f["params"] > 0
            if "int8" in name:  # judged by the gate, not by parity
                assert {"shipped", "reason", "accuracy_drop_points", "latency_ratio"} <= set(f)
                assert f["shipped"] == ("p50_ms" in f)
                continue
            assert set(f) >= MODEL_KEYS and f["shipped"]
            assert f["max_abs_diff"] <= 1e-4
            assert f["top1_agreement"] == 1.0
            assert f["p90_ms"] >= f["p50_ms"] > 0
        if "int8" not in name:
            d = entry["speedup_detail"]  # the median of per-round ratios, within its IQR
            assert d["iqr"][0] <= entry["speedup"] == d["ratio"] <= d["iqr"][1]
            assert entry["student"]["params"] * 20 <= entry["teacher"]["params"]
    assert figs["wall_s"] > 0


@pytest.mark.backends
def test_run_directory_is_complete_and_hashed(fast_cli_run):
    out, figs = fast_cli_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["figures"]["targets"].keys() == figs["targets"].keys()
    assert manifest["recipe"]["teacher"]["epochs"] == 2
    for name in (
        "teacher/model.pt",
        "student/model.pt",
        "export/student.onnx",
        "export/teacher.onnx",
        "compile/openvino-cpu/student.xml",
        "compile/ort-cpu/student.onnx",
        "report.md",
    ):
        assert manifest["files"][name]["sha256"] == sha256(out / name)
    report = (out / "report.md").read_text()
    assert "| ort-cpu | student |" in report and "| openvino-cpu | teacher |" in report


@pytest.mark.backends
def test_exported_onnx_has_a_symbolic_batch_axis_and_metadata(fast_cli_run):
    import onnx

    model = onnx.load(str(fast_cli_run[0] / "export" / "student.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == [str(i) for i in range(10)]
    assert json.loads(meta["teacher"])["model"] == "zoo:digits-cnn-large"
    assert meta["role"] == "student"


def test_rerun_reuses_the_cached_teacher(run_copy):
    before = sha256(run_copy / "teacher" / "model.pt")
    result = kdx("train-teacher", run_copy)
    assert "teacher" in result.stdout
    assert "cached" in result.stderr
    assert sha256(run_copy / "teacher" / "model.pt") == before
    kdx("train-teacher", run_copy, "--set", "teacher.epochs=1")
    assert sha256(run_copy / "teacher" / "model.pt") != before


def test_each_stage_alone(tmp_path):
    run = tmp_path / "run"
    assert "test accuracy" in kdx("train-teacher", run, *FAST_ARGS).stdout
    assert "test accuracy" in kdx("distill", run).stdout  # the recipe is read back from the run
    assert "student.onnx" in kdx("export", run).stdout
    assert not (run / "manifest.json").exists()
    assert "ort-cpu/student.onnx" in kdx("compile", run, "--target", "ort-cpu").stdout
    assert "speed-up" in kdx("benchmark", run).stdout
    figs = json.loads(kdx("report", run, "--json").stdout.strip().splitlines()[-1])
    assert list(figs["targets"]) == ["ort-cpu"]
    assert (run / "manifest.json").is_file() and (run / "report.md").is_file()
    # A stage that runs again makes the run incomplete until `report` runs.
    kdx("benchmark", run)
    assert not (run / "manifest.json").exists()


def test_python_api(tmp_path):
    from kdexport.pipeline import distill_and_export

    figs = distill_and_export(tmp_path / "run", overrides=[*FAST, "compile.targets=['ort-cpu']"])
    assert list(figs["targets"]) == ["ort-cpu"]


def test_targets_command():
    out = kdx("targets").stdout
    assert "ort-cpu" in out and "openvino-cpu" in out and "ort-cuda" in out
