"""GPU targets (ort-cuda, ort-cuda-fp16, ort-tensorrt) and tools/gpu_check.py.

Bad profiles, the install checks and the fp16 conversion are tested everywhere; parity and IO
binding on a real GPU are marked ``gpu`` (skipped where CUDAExecutionProvider cannot start).
The gpu tests other than the pipeline one use no conftest fixture, so that gpu_check.py can run
them with ``--noconftest`` on a machine without click or scikit-learn.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdexport.backends import ort as ort_backend
from kdexport.backends.profiles import load_target

REPO = Path(__file__).resolve().parents[1]
CUDA_REASON = load_target("ort-cuda").unavailable_reason()


def _one_line_error(result, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], result.stderr
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in result.output + result.stderr


def _profile(tmp_path: Path, text: str, name: str = "mine") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def _cuda_profile(**provider_options) -> str:
    opts = "".join(f"{k} = {json.dumps(v)}\n" for k, v in provider_options.items())
    return (
        'backend = "onnxruntime"\ndevice = "cuda"\nprecision = "fp32"\n[options]\n'
        f'provider = "CUDAExecutionProvider"\n[options.provider_options]\n{opts}'
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The default student (fresh, seeded weights) exported to ONNX: (file, inputs, torch's outputs)."""
    import torch

    from kdexport.export import export_onnx
    from kdexport.zoo import create_model

    torch.manual_seed(0)
    model = create_model("zoo:digits-cnn-small", 10, 1)
    x = np.random.default_rng(0).standard_normal((256, 1, 8, 8)).astype(np.float32)
    path = tmp_path_factory.mktemp("tiny") / "student.onnx"
    opts = {"opset": 18, "example_batch": 4, "tolerance": 1e-4, "external_data_mb": 1800}
    export_onnx(model, path, torch.from_numpy(x[:4]), x[:16], opts, {"role": "student"})
    with torch.no_grad():
        return path, x, model(torch.from_numpy(x)).numpy()


@pytest.fixture
def cuda():
    if CUDA_REASON:
        pytest.skip(CUDA_REASON)


# Everywhere: the targets, bad profiles, the install checks, fp16 conversion, gpu_check.py.


def test_targets_lists_the_gpu_targets_with_reasons():
    from conftest import kdx

    out = kdx("targets").stdout
    for name in ("ort-cuda", "ort-cuda-fp16", "ort-cuda-graph", "ort-tensorrt"):
        assert name in out
        reason = load_target(name).unavailable_reason()
        assert (reason or "available") in out
    if CUDA_REASON:
        assert "CUDAExecutionProvider" in CUDA_REASON and "onnxruntime-gpu" in CUDA_REASON


def test_report_prints_why_a_target_was_skipped_as_it_is(run_copy):
    """The fix names onnxruntime-gpu[cuda,cudnn]: rich must not read the brackets as markup."""
    from conftest import kdx

    if not CUDA_REASON:
        pytest.skip("CUDA is available here")
    printed = " ".join(kdx("report", run_copy).stdout.split())  # rich wraps long lines
    assert "onnxruntime-gpu[cuda,cudnn]" in CUDA_REASON
    assert f"skipped ort-cuda: {' '.join(CUDA_REASON.split())}" in printed


def test_compile_for_cuda_where_there_is_none_is_one_line(run_copy):
    from conftest import kdx

    if not CUDA_REASON:
        pytest.skip("CUDA is available here")
    result = kdx("compile", run_copy, "--target", "ort-cuda", code=None)
    _one_line_error(result, "target 'ort-cuda' is not available here: this onnxruntime")
    assert (
        "CUDAExecutionProvider" in result.stderr
        and "pip install 'onnxruntime-gpu[cuda,cudnn]'" in result.stderr
    )


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            'backend = "onnxruntime"\ndevice = "cpu"\nprecision = "fp16"\n',
            "precision fp16 is not supported on CPUExecutionProvider (it needs a GPU provider)",
        ),
        (
            'backend = "onnxruntime"\ndevice = "cpu"\nprecision = "fp32"\n[options]\n'
            'provider = "CUDAExecutionProvider"\n',
            "device 'cpu' does not fit CUDAExecutionProvider; set device = \"cuda\"",
        ),
    ],
)
def test_cpu_profile_mistakes_are_one_line(run_copy, tmp_path, profile, message):
    from conftest import kdx

    result = kdx("compile", run_copy, "--target", _profile(tmp_path, profile), code=None)
    _one_line_error(result, message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device_id": -1}, "provider_options.device_id = -1 must be an integer >= 0"),
        ({"device_id": "0"}, "provider_options.device_id = '0' must be an integer >= 0"),
        ({"gpu_mem_limit": 1.5}, "provider_options.gpu_mem_limit = 1.5 must be an integer"),
        ({"cudnn_conv_algo_search": "FAST"}, "use one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
        ({"arena_extend_strategy": "grow"}, "use one of kNextPowerOfTwo, kSameAsRequested"),
    ],
)
def test_bad_provider_options(tmp_path, options, message):
    reason = load_target(_profile(tmp_path, _cuda_profile(**options))).unavailable_reason()
    assert message in reason and "\n" not in reason


def test_other_bad_gpu_profiles(tmp_path):
    base = 'backend = "onnxruntime"\ndevice = "cuda"\nprecision = "fp16"\n[options]\n'
    cases = {
        'provider = "FooExecutionProvider"\n': "unknown execution provider 'FooExecutionProvider'",
        'provider = "CUDAExecutionProvider"\nkeep_io_types = "yes"\n': "options.keep_io_types must",
        'provider = "CUDAExecutionProvider"\nfp16_op_block_list = "Resize"\n': "a list of op types",
        'provider = "CUDAExecutionProvider"\nprovider_options = 3\n': "must be a table",
        'provider = "TensorrtExecutionProvider"\n[options.provider_options]\nenable_cuda_graph = true\n': "enable_cuda_graph needs provider",
    }
    for i, (options, message) in enumerate(cases.items()):
        target = load_target(_profile(tmp_path, base + options, f"p{i}"))
        assert message in target.unavailable_reason()


def test_cuda_graph_profile():
    """ort-cuda-graph: CUDA with enable_cuda_graph; the others replay no graphs."""
    graph = load_target("ort-cuda-graph")
    assert ort_backend.cuda_graph(graph) and graph.precision == "fp32"
    assert ort_backend.provider_options(graph)["enable_cuda_graph"] == "1"
    assert not ort_backend.cuda_graph(load_target("ort-cuda"))
    assert ort_backend.profile_problem(graph) is None
    if CUDA_REASON:  # reported unavailable like the other CUDA targets, with the same reason
        assert graph.unavailable_reason() == load_target("ort-cuda").unavailable_reason()


def test_cuda_graph_buffers_on_the_cpu(tiny_onnx, tmp_path):
    """The fixed-buffer logic behind ort-cuda-graph, rehearsed on the CPU provider (which ignores
    graph ids): one set of buffers per input shape, new inputs copied in, right answers."""
    import onnxruntime as ort

    path, x, reference = tiny_onnx
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graphs = ort_backend.CudaGraphs(sess, "cpu", 0)
    name = sess.get_inputs()[0].name
    kept = x.copy()
    for batch in (x[:4], x[4:8], x[:1], x[8:12]):
        (out,) = graphs.run({name: np.ascontiguousarray(batch)})
        expected = sess.run(None, {name: batch})[0]
        np.testing.assert_allclose(out, expected, rtol=0, atol=0)
    assert len(graphs.graphs) == 2  # batch 4 and batch 1
    np.testing.assert_array_equal(x, kept)  # the caller's arrays are never written into
    call = graphs.bind({name: np.ascontiguousarray(x[:4])})
    call()


def test_provider_options_as_onnxruntime_takes_them():
    assert ort_backend.provider_options(load_target("ort-cuda")) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": "1",
        "use_tf32": "0",
    }  # gpu_mem_limit = 0 (no limit) is left to ONNX Runtime's default


def test_legacy_device_id_option(tmp_path):
    text = _cuda_profile().replace("[options.provider_options]\n", "device_id = 1\n")
    target = load_target(_profile(tmp_path, text))
    assert ort_backend.device_id(target) == 1
    assert ort_backend.provider_options(target)["device_id"] == "1"


def test_onnxruntime_builds_installed_together(tmp_path):
    site, other = tmp_path / "site-packages", tmp_path / "extra"
    init = site / "onnxruntime" / "__init__.py"
    both_here = {"onnxruntime": init, "onnxruntime-gpu": init}
    problem = ort_backend.install_problem(both_here, init)
    assert "onnxruntime and onnxruntime-gpu are both installed and conflict" in problem
    fix = (
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'"
    )
    assert fix in problem and "(or onnxruntime, for the CPU alone)" in problem
    # pip install --target DIR on PYTHONPATH: two folders, the first on sys.path is imported
    apart = {"onnxruntime": init, "onnxruntime-gpu": other / "onnxruntime" / "__init__.py"}
    assert ort_backend.install_problem(apart, other / "onnxruntime" / "__init__.py") is None
    assert (
        ort_backend.build_in_use(apart, other / "onnxruntime" / "__init__.py") == "onnxruntime-gpu"
    )
    # and this machine's own installation
    import onnxruntime

    assert (
        ort_backend.install_problem(ort_backend.ort_distributions(), onnxruntime.__file__) is None
    )


_WITHOUT_ONNXRUNTIME = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "onnxruntime":
            raise ModuleNotFoundError(f"No module named '{name}'")
sys.meta_path.insert(0, Block())
from kdexport.errors import KdxError
from kdexport.onnxfile import run_reference
try:
    run_reference("model.onnx", None)
except KdxError as e:
    print(e)
sys.argv = ["kdexport", "targets"]
from kdexport.cli import main
main()
"""


def test_without_onnxruntime_the_install_is_named():
    """onnxruntime comes with the [cpu] or [gpu] extra: where neither is installed, the
    ONNX Runtime targets and the export check say how to install one."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONNXRUNTIME], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("checking the exported model against PyTorch needs the onnxruntime")
    ort_lines = [
        next(ln for ln in lines if f"target '{name}' needs the onnxruntime package" in ln)
        for name in ("ort-cpu", "ort-cuda")
    ]
    for line in [lines[0], *ort_lines]:
        assert "pip install 'kdexport[cpu]', or 'kdexport[gpu]' for CUDA" in line, line


def test_wheel_names_onnxruntime_by_extra():
    import importlib.metadata

    requires = importlib.metadata.requires("kdexport")
    assert 'onnxruntime>=1.21; extra == "cpu"' in requires
    assert 'onnxruntime-gpu[cuda,cudnn]>=1.21; extra == "gpu"' in requires
    assert not [r for r in requires if r.startswith("onnxruntime") and "extra ==" not in r]


def test_gpu_start_failures_are_one_line_with_the_fix():
    error = (
        "[ONNXRuntimeError] : 1 : FAIL : Invalid device ID: 3, must be between 0 (inclusive) "
        "and 1 (exclusive)."
    )
    out_of_range = ort_backend.start_problem("CUDAExecutionProvider", error, 3)
    assert out_of_range.startswith("device_id 3 is out of range (")
    assert "nvidia-smi -L" in out_of_range
    missing = ort_backend.start_problem(
        "CUDAExecutionProvider", "libcudnn.so.9: cannot open shared object file\nmore", 0
    )
    assert "CUDA/cuDNN libraries missing" in missing and "onnxruntime-gpu[cuda,cudnn]" in missing
    assert "\n" not in missing
    trt = ort_backend.start_problem("TensorrtExecutionProvider", "", 0)
    assert "TensorRT libraries missing" in trt and "ort-cuda" in trt


@pytest.mark.backends
def test_fp16_conversion_keeps_float32_io(tiny_onnx, tmp_path):
    import onnx
    import onnxruntime as ort

    from kdexport.backends.fp16 import convert
    from kdexport.evaluate import parity

    path, x, reference = tiny_onnx
    facts = convert(path, tmp_path / "s.fp16.onnx")  # passes onnx.checker (full check)
    assert [v["dtype"] for v in facts["inputs"] + facts["outputs"]] == ["float32", "float32"]
    weights = onnx.load(str(tmp_path / "s.fp16.onnx")).graph.initializer
    assert {w.data_type for w in weights if len(w.dims) > 1} == {onnx.TensorProto.FLOAT16}
    sess = ort.InferenceSession(str(tmp_path / "s.fp16.onnx"), providers=["CPUExecutionProvider"])
    fp16 = load_target("ort-cuda-fp16")
    check = parity(
        sess.run(None, {"input": x})[0],
        reference,
        fp16.atol,
        rtol=fp16.rtol,
        min_agreement=fp16.min_agreement,
    )
    assert check["passed"], check["summary"]
    halves = convert(path, tmp_path / "h.fp16.onnx", keep_io_types=False)
    assert [v["dtype"] for v in halves["inputs"] + halves["outputs"]] == ["float16", "float16"]


def test_gpu_check_without_cuda_writes_why(tmp_path):
    if not CUDA_REASON:
        pytest.skip("CUDA is available here")
    args = [sys.executable, "tools/gpu_check.py", "--no-pytest"]
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cuda"]["available"] is False
    assert "CUDAExecutionProvider" in report["cuda"]["reason"]
    assert report["checks"]["providers"]["ok"] and report["checks"]["parity"]["skipped"]
    assert all(g["passed"] is None for k, g in report["goals"].items() if "parity" in k)


def test_gpu_device_check_without_the_wheel_parts_says_so(tmp_path):
    env = {**os.environ, "ORTGPU_PARTS": str(tmp_path), "ORTGPU_SITE": str(tmp_path / "site")}
    args = ["bash", "tools/gpu_device_check.sh", "onnxruntime_gpu-1.31.1-cp312-cp312-x.whl"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == f"no parts in {tmp_path}: copy .gpuwheel/part-* there"


# The packages tools/gpu_check.py cannot count on (the GPU machine has none of them).
OPTIONAL = ["sklearn", "click", "rich", "openvino", "nncf", "matplotlib"]
_BLOCKED_IMPORTS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ModuleNotFoundError(f"No module named '{{name}}' (blocked)")
sys.meta_path.insert(0, Block())
import kdexport.backends.ort, kdexport.benchmark, kdexport.timing, kdexport.distill
import kdexport.evaluate, kdexport.export, kdexport.backends.fp16, kdexport.backends.profiles, kdexport.zoo
"""


@pytest.mark.parametrize(
    "blocked",
    [OPTIONAL, [*OPTIONAL, "tomli_w"]],
)
def test_gpu_check_imports_need_no_optional_package(blocked):
    code = _BLOCKED_IMPORTS.format(blocked=set(blocked))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]


# On a GPU.


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-cuda-fp16", "ort-cuda-graph"])
def test_cuda_target_matches_pytorch(cuda, tiny_onnx, tmp_path, name):
    from kdexport.evaluate import parity

    path, x, reference = tiny_onnx
    target = load_target(name)
    main = ort_backend.compile(path, tmp_path, "student", target)
    runner = ort_backend.load(main, target)
    assert runner.info["provider"] == "CUDAExecutionProvider"
    assert runner.info["io_dtype"] == "float32" and runner.info["device_id"] == 0
    assert runner.info["nodes_by_provider"].get("CUDAExecutionProvider", 0) > 0
    check = parity(
        runner.run(x), reference, target.atol, rtol=target.rtol, min_agreement=target.min_agreement
    )
    assert check["passed"], check["summary"]
    call = runner.bind(x[:64])  # inputs on the GPU, outputs left there, synchronised
    call()


@pytest.mark.gpu
def test_fp16_with_float16_io_on_the_gpu(cuda, tiny_onnx, tmp_path):
    from kdexport.evaluate import parity

    path, x, reference = tiny_onnx
    text = (REPO / "kdexport" / "targets" / "ort-cuda-fp16.toml").read_text()
    target = load_target(
        _profile(tmp_path, text.replace("keep_io_types = true", "keep_io_types = false"))
    )
    runner = ort_backend.load(ort_backend.compile(path, tmp_path, "student", target), target)
    assert runner.info["io_dtype"] == "float16"
    out = runner.run(x)  # float32 in: cast to the model's float16
    assert out.dtype == np.float16
    target32 = load_target("ort-cuda-fp16")
    assert parity(
        out, reference, target32.atol, rtol=target32.rtol, min_agreement=target32.min_agreement
    )["passed"]
    runner.bind(x[:8])()


@pytest.mark.gpu
def test_batches_from_host_memory_come_through_pinned_buffers():
    import torch

    from kdexport.modalities.inputs import ArrayInputs
    from kdexport.train.loop import Pool

    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA GPU")
    x, y = torch.randn(500, 1, 8, 8), torch.arange(500)
    pool = Pool(ArrayInputs(x.numpy()), y, teacher_logits=torch.randn(500, 10))
    device = torch.device("cuda", 0)
    pool.place(device, "host")
    assert pool.placement == "pinned host"
    idx = torch.randperm(500)[:64]
    ((bx, by, logits, feature),) = pool.batches([idx], device)
    torch.cuda.synchronize()
    assert bx.device == device and by.device == device and logits.device == device
    assert torch.equal(bx.cpu(), x[idx]) and torch.equal(by.cpu(), y[idx]) and feature is None
    pool.place(device, "device")
    assert pool.placement == "device" and pool._tensors()[0][1].device == device


@pytest.mark.gpu
def test_out_of_range_device_id(cuda, tmp_path):
    reason = load_target(_profile(tmp_path, _cuda_profile(device_id=99))).unavailable_reason()
    assert "device_id 99 is" in reason and "nvidia-smi -L" in reason, reason


@pytest.mark.gpu
def test_pipeline_compile_ort_cuda_with_parity(run_copy):
    from kdexport.compile import compile_targets
    from kdexport.context import Run

    names = ["ort-cuda", "ort-cuda-fp16", "ort-cuda-graph"]
    art = compile_targets(Run(run_copy), targets=names, skip_unavailable=False)
    for name in names:
        result = art.checks["targets"][name]
        for model in ("teacher", "student"):
            assert result[model]["runtime"]["provider"] == "CUDAExecutionProvider"
            assert result[model]["parity"]["passed"]
