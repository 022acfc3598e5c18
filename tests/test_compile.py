"""Compile: one conformance suite over every target, the INT8 gate, and bad profiles."""

import pytest

from kdexport.artifact import Artifact
from kdexport.backends.profiles import builtin_names, load_target
from kdexport.benchmark import benchmark
from kdexport.compile import compile_targets
from kdexport.context import Run
from kdexport.errors import KdxError

AVAILABLE = [n for n in builtin_names() if load_target(n).unavailable_reason() is None]


@pytest.mark.backends
@pytest.mark.parametrize("name", builtin_names())
def test_conformance(fast_cli_run, name):
    """Every target available here compiled both models in the fast run and met its rules."""
    target = load_target(name)
    checks = Artifact.open(fast_cli_run[0] / "compile", "compile", "").checks
    if target.unavailable_reason():
        assert name in checks["skipped"]
        return
    result = checks["targets"][name]
    for model in ("teacher", "student"):
        r = result[model]
        assert r["parity"]["samples"] >= 256 or r["parity"]["samples"] == 360
        if target.precision == "int8":
            gate = r["accuracy_drop_points"] <= 1.0 and r["latency_ratio"] < 1.0
            assert r["shipped"] == (gate and r["parity"]["passed"])
            files = list((fast_cli_run[0] / "compile" / name).glob(f"{model}.*"))
            assert bool(files) == r["shipped"]  # a model that failed its gate is not shipped
        else:
            assert r["shipped"] and r["parity"]["passed"]
            assert r["parity"]["frac_out_of_bound"] == 0.0
            assert r["parity"]["max_abs_diff"] <= target.atol + target.rtol * 25  # logits < 25
            assert r["parity"]["top1_agreement"] >= target.min_agreement


@pytest.mark.backends
def test_cpu_target_runs_every_node_on_the_cpu(fast_cli_run):
    checks = Artifact.open(fast_cli_run[0] / "compile", "compile", "").checks
    runtime = checks["targets"]["ort-cpu"]["student"]["runtime"]
    assert set(runtime["nodes_by_provider"]) == {"CPUExecutionProvider"}
    assert "cpu_fallback_nodes" not in checks["targets"]["ort-cpu"]["student"]


@pytest.mark.backends
def test_openvino_cache_is_written_at_compile(fast_cli_run):
    assert any((fast_cli_run[0] / "compile" / "openvino-cpu" / "cache").iterdir())


@pytest.mark.backends
def test_benchmark_times_only_shipped_models(run_copy):
    compiled = compile_targets(
        Run(run_copy), targets=["ort-cpu", "ort-cpu-int8"], skip_unavailable=False
    )
    shipped = {
        m
        for m in ("teacher", "student")
        if compiled.checks["targets"]["ort-cpu-int8"][m]["shipped"]
    }
    opts = {
        "batch_sizes": [1],
        "warmup_iters": 1,
        "warmup_s": 0.0,
        "min_iters": 3,
        "min_time_s": 0.0,
        "rounds": 1,
    }
    timed = benchmark(Run(run_copy), **opts).checks["targets"]
    assert set(timed.get("ort-cpu-int8", {})) & {"teacher", "student"} == shipped


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            'backend = "onnxruntime"\ndevice = "cpu"\nprecision = "fp64"\n',
            "unknown precision 'fp64'",
        ),
        ('backend = "onnxruntime"\ndevice = "cpu"\n', "missing keys ['precision']"),
        (
            'backend = "onnxruntime"\ndevice = "cpu"\nprecision = "int8"\n[quantization]\nbits = 4\n',
            "unknown [quantization] keys ['bits']",
        ),
        ('backend = "tensorrt"\ndevice = "cuda"\nprecision = "fp32"\n', None),
    ],
)
def test_bad_profiles(tmp_path, profile, message):
    path = tmp_path / "mine.toml"
    path.write_text(profile)
    if message is None:  # an unknown backend is a target that is not available, with the reason
        assert "unknown backend 'tensorrt'" in load_target(str(path)).unavailable_reason()
        return
    with pytest.raises(KdxError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_target(str(path))


def test_bad_quantization_method(run_copy, tmp_path):
    from kdexport.backends.profiles import BUILTIN_DIR

    path = tmp_path / "bad-int8.toml"
    text = (BUILTIN_DIR / "ort-cpu-int8.toml").read_text()
    path.write_text(text.replace('method = "minmax"', 'method = "kl"'))
    with pytest.raises(KdxError, match="quantization.method 'kl' is not one of minmax"):
        compile_targets(Run(run_copy), targets=[str(path)], skip_unavailable=False)
    assert Artifact.open(run_copy / "compile", "compile", "")  # the old compile is intact


def test_fp16_on_a_cpu_target_is_refused(tmp_path, run_copy):
    path = tmp_path / "cpu-fp16.toml"
    path.write_text('backend = "onnxruntime"\ndevice = "cpu"\nprecision = "fp16"\n')
    with pytest.raises(KdxError, match="precision fp16 is not supported"):
        compile_targets(Run(run_copy), targets=[str(path)], skip_unavailable=False)


def test_export_cli_flags(run_copy):
    from conftest import kdx

    out = kdx("export", run_copy, "--opset", "17", "--static").stdout
    assert "student-static.onnx  batch 1" in out and "opset 17" in out
    assert "opset = 17" in (run_copy / "recipe.toml").read_text()
    kdx("export", run_copy, "--opset", "99", code=1)
