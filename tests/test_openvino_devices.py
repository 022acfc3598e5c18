"""OpenVINO's own device choice as targets (issue 15): AUTO and HETERO profiles, available only
where the devices they list exist, and a record of the device AUTO actually ran on."""

import json

import numpy as np
import onnx
import openvino as ov
import pytest
from conftest import kdx

from kdexport.backends.openvino import devices_problem, named_devices
from kdexport.backends.profiles import PARITY, load_target
from kdexport.compile import compile_model, select_targets
from kdexport.errors import KdxError
from kdexport.onnxfile import make_model

HETERO_LINE = devices_problem("HETERO:GPU,CPU", ov.Core().available_devices)


@pytest.mark.parametrize(
    ("name", "device", "precision"),
    [
        ("openvino-auto", "AUTO", "fp32"),
        ("openvino-auto-gpu", "AUTO:GPU,CPU", "fp16"),
        ("openvino-hetero-gpu", "HETERO:GPU,CPU", "fp16"),
    ],
)
def test_profiles_load_with_their_precision_bound(name, device, precision):
    target = load_target(name)
    assert (target.backend, target.device, target.precision) == ("openvino", device, precision)
    assert (target.atol, target.rtol, target.min_agreement) == PARITY[precision]


def test_named_devices():
    assert named_devices("HETERO:GPU,CPU") == ["GPU", "CPU"]
    assert named_devices("AUTO:GPU,CPU") == ["GPU", "CPU"]
    assert named_devices("AUTO") == []  # whatever exists
    assert named_devices("CPU") == ["CPU"] and named_devices("GPU.1") == ["GPU.1"]


@pytest.mark.parametrize("device", ["HETERO:GPU,CPU", "AUTO:GPU,CPU", "GPU"])
def test_gpu_profiles_need_a_gpu(device):
    line = devices_problem(device, ["CPU"])
    assert line.startswith(f"{device}: OpenVINO sees no GPU here (available_devices: CPU)")
    assert "OpenCL" in line and "\n" not in line
    assert devices_problem(device, ["CPU", "GPU"]) is None
    assert devices_problem(device, ["CPU", "GPU.0", "GPU.1"]) is None


def test_device_names_and_indices():
    assert devices_problem("AUTO", ["CPU"]) is None
    assert (
        devices_problem("AUTO", [])
        == "AUTO: OpenVINO sees no device here (available_devices: none)"
    )
    assert devices_problem("GPU.1", ["CPU", "GPU.0", "GPU.1"]) is None
    assert devices_problem("GPU.0", ["CPU", "GPU"]) is None  # a single GPU is listed as GPU
    assert "no GPU.2 here" in devices_problem("GPU.2", ["CPU", "GPU.0", "GPU.1"])
    assert "no NPU here" in devices_problem("HETERO:NPU,CPU", ["CPU", "GPU"])
    assert "OpenCL" not in devices_problem("HETERO:NPU,CPU", ["CPU", "GPU"])


@pytest.mark.backends
def test_unavailable_hetero_is_skipped_or_refused_with_its_line():
    if HETERO_LINE is None:
        pytest.skip("OpenVINO lists a GPU here")
    chosen, skipped = select_targets(["openvino-auto", "openvino-hetero-gpu"], True)
    assert [t.name for t in chosen] == ["openvino-auto"]
    assert skipped == {"openvino-hetero-gpu": HETERO_LINE}
    with pytest.raises(KdxError, match="target 'openvino-hetero-gpu' is not available here: "):
        select_targets(["openvino-hetero-gpu"], False)
    out = kdx("targets").stdout
    assert "openvino-auto " in out and f"unavailable: {HETERO_LINE}\n" in out


def _linear(path, w: np.ndarray, b: np.ndarray):
    """y = x·w + b, batch axis free: a tiny model with a reference in numpy."""
    init = [onnx.numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"))]
    vi = [
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["n", d])
        for n, d in (("x", w.shape[0]), ("y", w.shape[1]))
    ]
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "w"], ["xw"]),
        onnx.helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    onnx.save(make_model(onnx.helper.make_graph(nodes, "g", [vi[0]], [vi[1]], init)), str(path))
    return path


@pytest.mark.backends
def test_auto_compiles_benchmarks_and_says_where_it_ran(tmp_path):
    """openvino-auto end to end on this machine: parity within the fp32 bound, and compile and
    benchmark both record the device AUTO chose (EXECUTION_DEVICES), not the word AUTO."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(16, 10)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    model = _linear(tmp_path / "linear.onnx", w, b)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    sample = {"x": x, "y": (x @ w + b).argmax(1), "model": x @ w + b}
    (tmp_path / "out").mkdir()
    target = load_target("openvino-auto")
    result = compile_model(model, tmp_path / "out", "model", target, sample, None)
    assert result["shipped"] and result["parity"]["max_abs_diff"] <= PARITY["fp32"][0]
    runtime, available = result["runtime"], ov.Core().available_devices
    assert runtime["device"] in available and runtime["requested_device"] == "AUTO"
    if runtime["device"] == "CPU":  # the only device here: f32 pinned, threads explicit
        assert runtime["precision"] == "f32" and runtime["inference_num_threads"] >= 1
    args = ("benchmark", model, "--target", "openvino-auto", "--quick", "--batch-sizes", "1")
    bench = json.loads(kdx(*args, "--json").stdout.strip().splitlines()[-1])
    timed = bench["targets"]["openvino-auto"]["model"]
    assert timed["runtime"]["device"] == runtime["device"] and timed["latency"]["1"]["p50_ms"] > 0
