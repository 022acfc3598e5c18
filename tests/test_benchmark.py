"""Latency method, the benchmark stage and command, the report's chart and `compare`."""

import json

import numpy as np
import onnx
import pytest
from conftest import kdx

from kdexport.benchmark import benchmark
from kdexport.compile import compile_targets
from kdexport.context import Run
from kdexport.onnxfile import make_model
from kdexport.timing import median_ci95, pooled

QUICK = {"warmup_iters": 1, "warmup_s": 0.0, "min_iters": 20, "min_time_s": 0.0, "rounds": 2}


def test_median_ci95_brackets_the_median():
    ms = list(np.linspace(1.0, 2.0, 101))
    lo, hi = median_ci95(ms)
    assert lo < 1.5 < hi
    assert (lo, hi) == (ms[40], ms[61])  # 0-based ranks floor/ceil of 50.5 -/+ 1.96 * sqrt(101) / 2


def test_pooled_flags_repeats_that_disagree():
    steady = pooled([[1.0, 1.01, 0.99], [1.0, 1.02, 0.98]])
    assert not steady["unstable"] and steady["repeat_medians_ms"] == [1.0, 1.0]
    drifting = pooled([[1.0] * 5, [1.2] * 5])
    assert drifting["unstable"] and drifting["repeat_cv"] > 0.05


@pytest.mark.backends
def test_stage_with_repeats_and_memory(run_copy):
    compile_targets(Run(run_copy), targets=["ort-cpu"], skip_unavailable=False)
    checks = benchmark(Run(run_copy), batch_sizes=[1, 4], repeats=2, memory=True, **QUICK).checks
    result = checks["targets"]["ort-cpu"]
    for model in ("teacher", "student"):
        st = result[model]["latency"]["1"]
        assert len(st["repeat_medians_ms"]) == 2
        assert st["p50_ci95_ms"][0] <= st["p50_ms"] <= st["p50_ci95_ms"][1]
        assert st["end_to_end"]["p50_ms"] > 0 and result[model]["cold_start"]["load_s"] > 0
        memory = result[model]["memory"]
        assert memory["peak_rss_mb"] >= memory["runtime_baseline_mb"] > 0
    assert set(result["speedup"]) == {"1", "4"}
    assert checks["environment"]["cpu"] and "onnxruntime" in checks["environment"]["versions"]


@pytest.mark.backends
def test_benchmark_any_onnx_file(fast_cli_run):
    student = fast_cli_run[0] / "export" / "student.onnx"
    out = kdx(
        "benchmark",
        student,
        "--target",
        "openvino-cpu",
        "--target",
        "ort-cpu",
        "--quick",
        "--batch-sizes",
        "1,3",
        "--json",
    ).stdout
    assert "openvino-cpu model batch 3: p50" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["targets"]) == {"openvino-cpu", "ort-cpu"}
    assert result["targets"]["ort-cpu"]["model"]["runtime"]["providers"] == ["CPUExecutionProvider"]


def _identity(path, shape):
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in ("x", "y")]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [vi[0]], [vi[1]]
    )
    onnx.save(make_model(graph), str(path))
    return path


@pytest.mark.parametrize(
    ("shape", "args", "message"),
    [
        (["N", "C", 8, 8], [], "give the full shape, e.g. --shape"),
        ([1, 1, 8, 8], ["--batch-sizes", "4"], "static batch of 1; batch size 4 is not possible"),
        ([1, 1, 8, 8], ["--target", "ort-cpu-int8"], "needs calibration data"),
        ([1, 1, 8, 8], ["--target", "ort-cuda"], None),
        ([1, 1, 8, 8], ["--set", "benchmark.min_iters=0"], "benchmark.min_iters = 0 must be >= 1"),
        ([1, 1, 8, 8], ["--shape", "1,8,8"], "--shape has 3 dims"),
    ],
)
def test_benchmark_bad_input(tmp_path, shape, args, message):
    from kdexport.backends.profiles import load_target

    if message is None:
        reason = load_target("ort-cuda").unavailable_reason()
        if reason is None:
            pytest.skip("CUDA is available here")
        message = "'ort-cuda' is not available here"
    result = kdx("benchmark", _identity(tmp_path / "m.onnx", shape), "--quick", *args, code=1)
    assert message in result.stderr and "Traceback" not in result.stderr


def test_shape_option_for_symbolic_dims(tmp_path):
    out = kdx(
        "benchmark",
        _identity(tmp_path / "m.onnx", ["N", "C", 8, 8]),
        "--shape",
        "1,3,8,8",
        "--quick",
    ).stdout
    assert "ort-cpu model batch 1: p50" in out


def test_report_has_chart_and_detail(fast_cli_run):
    run = fast_cli_run[0]
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (run / "report.md").read_text()
    assert "## Latency detail" in text and "Ideal speed-up from FLOPs" in text
    assert fast_cli_run[1]["ideal_speedup"] > 1


def test_compare(fast_cli_run, tmp_path):
    out = kdx("compare", fast_cli_run[0], fast_cli_run[0], "--json").stdout
    result = json.loads(out.strip().splitlines()[-1])
    ort_student = next(r for r in result["rows"] if r[:2] == ["ort-cpu", "student"])
    assert ort_student[6] == "1.00"
    assert "A:" in out and "B:" in out
    result = kdx("compare", fast_cli_run[0], tmp_path, code=1)
    assert "is not a complete run" in result.stderr


def test_the_report_header_names_the_batch_or_shape_its_latency_columns_show():
    from kdexport.report import header

    def figs(*keys):
        return {"targets": {"ort-cpu": {"student": {"latency": dict.fromkeys(keys, {})}}}}

    assert header(figs("8", "64"))[8:10] == ["p50 ms (b=8)", "p90 ms (b=8)"]
    assert header(figs("1x16", "1x128", "8x128"))[8] == "p50 ms (1x128)"
    assert header({"targets": {"ort-cpu": {"student": {}}}})[8] == "p50 ms (b=1)"  # not timed
