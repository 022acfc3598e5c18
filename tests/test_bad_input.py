"""Bad input across every command, table-driven: each case asserts the exit code (2 for usage
errors, 1 for the rest), one line on stderr naming the problem (progress may precede it), no
traceback without --debug, and nothing half-written where the user looks for results.

The pipeline checks what it can (models, data, targets) before it trains anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_ARGS, fails, kdx

from kdexport.artifact import leftovers
from kdexport.onnxfile import make_model


def _npz(tmp: Path, **arrays) -> str:
    np.savez(tmp / "d.npz", **arrays)
    return f"data.source={tmp / 'd.npz'}"


def _file(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _half(path: Path, tmp: Path, name: str) -> Path:
    data = path.read_bytes()
    return _file(tmp, name, data[: len(data) // 2])


def _pipeline(*sets: str):
    """distill-and-export into tmp/out with FAST settings and the given --set overrides."""
    return lambda tmp, run: [
        "distill-and-export",
        "--out",
        tmp / "out",
        *FAST_ARGS,
        *[a for s in sets for a in ("--set", s)],
    ]


def _pipeline_with(make_set):
    return lambda tmp, run: _pipeline(make_set(tmp, run))(tmp, run)


def _onnx_input(shape, dtype: str = "FLOAT"):
    import onnx

    def make(tmp, run):
        elem = getattr(onnx.TensorProto, dtype)
        vi = [onnx.helper.make_tensor_value_info(n, elem, shape) for n in ("x", "y")]
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [vi[0]], [vi[1]]
        )
        onnx.save(
            make_model(graph),
            str(tmp / "m.onnx"),
        )
        return tmp / "m.onnx"

    return make


def _tamper(rel: str, data: bytes = b"garbage"):
    def make(tmp, run):
        (run / rel).write_bytes(data)
        return run

    return make


# (id, category, build(tmp, run) -> argv, exit code, message)
CASES = [
    # missing and unreadable paths
    (
        "recipe-missing",
        "path",
        lambda t, r: ["distill-and-export", "--out", t / "o", "--recipe", t / "nope.toml"],
        1,
        "nope.toml: no such file",
    ),
    (
        "recipe-is-dir",
        "path",
        lambda t, r: ["distill-and-export", "--out", t / "o", "--recipe", t],
        2,
        "is a directory",
    ),
    (
        "export-empty-run",
        "path",
        lambda t, r: ["export", t / "empty"],
        1,
        "run `kdexport train-teacher",
    ),
    ("compile-empty-run", "path", lambda t, r: ["compile", t / "empty"], 1, "run `kdexport export"),
    (
        "benchmark-empty-run",
        "path",
        lambda t, r: ["benchmark", t / "empty"],
        1,
        "run `kdexport compile",
    ),
    (
        "report-empty-run",
        "path",
        lambda t, r: ["report", t / "empty"],
        1,
        "run `kdexport train-teacher",
    ),
    ("status-missing-run", "path", lambda t, r: ["status", t / "nope"], 1, "no such run directory"),
    (
        "verify-missing",
        "path",
        lambda t, r: ["verify", t / "nope.kdx.tar.gz"],
        1,
        "nope.kdx.tar.gz",
    ),
    ("import-missing", "path", lambda t, r: ["import-results", t / "nope.json"], 1, "nope.json"),
    (
        "benchmark-onnx-missing",
        "path",
        lambda t, r: ["benchmark", t / "nope.onnx"],
        1,
        "no such ONNX file",
    ),
    (
        "checkpoint-missing",
        "path",
        _pipeline("teacher.checkpoint=missing.pt"),
        1,
        "checkpoint missing.pt: no such file",
    ),
    ("data-missing", "path", _pipeline("data.source=missing.npz"), 1, "missing.npz: no such file"),
    # empty files
    (
        "recipe-garbage",
        "empty",
        lambda t, r: [
            "distill-and-export",
            "--out",
            t / "o",
            "--recipe",
            _file(t, "r.toml", b"[x\n="),
        ],
        1,
        "not valid TOML",
    ),
    (
        "checkpoint-empty",
        "empty",
        _pipeline_with(lambda t, r: f"teacher.checkpoint={_file(t, 'e.pt', b'')}"),
        1,
        "not a readable weights-only state_dict",
    ),
    (
        "onnx-empty",
        "empty",
        lambda t, r: ["benchmark", _file(t, "e.onnx", b""), "--quick"],
        1,
        "not a readable ONNX model",
    ),
    (
        "bundle-empty",
        "empty",
        lambda t, r: ["verify", _file(t, "e.kdx.tar.gz", b"")],
        1,
        "e.kdx.tar.gz",
    ),
    (
        "result-empty",
        "empty",
        lambda t, r: ["import-results", _file(t, "r.json", b"")],
        1,
        "r.json",
    ),
    # corrupt and truncated checkpoints, ONNX and archives
    (
        "checkpoint-truncated",
        "corrupt",
        _pipeline_with(
            lambda t, r: f"teacher.checkpoint={_half(r / 'teacher' / 'model.pt', t, 'h.pt')}"
        ),
        1,
        "not a readable weights-only state_dict",
    ),
    (
        "onnx-truncated",
        "corrupt",
        lambda t, r: ["benchmark", _half(r / "export" / "teacher.onnx", t, "h.onnx"), "--quick"],
        1,
        "h.onnx",
    ),
    (
        "onnx-not-onnx",
        "corrupt",
        lambda t, r: ["benchmark", _file(t, "n.onnx", b"hello world"), "--quick"],
        1,
        "not a readable ONNX model",
    ),
    (
        "bundle-corrupt",
        "corrupt",
        lambda t, r: ["verify", _file(t, "c.kdx.tar.gz", b"\x1f\x8b" + b"\0" * 64)],
        1,
        "c.kdx.tar.gz",
    ),
    (
        "export-tampered",
        "corrupt",
        lambda t, r: ["compile", _tamper("export/student.onnx")(t, r)],
        1,
        "student.onnx: missing or changed",
    ),
    (
        "manifest-corrupt",
        "corrupt",
        lambda t, r: ["benchmark", _tamper("compile/manifest.json", b"{not json")(t, r)],
        1,
        "unreadable manifest",
    ),
    (
        "pickle-refused",
        "corrupt",
        _pipeline_with(
            lambda t, r: (
                torch.save(torch.nn.Linear(2, 2), t / "full.pt"),
                f"teacher.checkpoint={t / 'full.pt'}",
            )[1]
        ),
        1,
        "not a readable weights-only state_dict",
    ),
    # wrong-architecture checkpoints
    (
        "teacher-ckpt-of-student",
        "architecture",
        lambda t, r: [
            "train-teacher",
            t / "o",
            "--set",
            f"teacher.checkpoint={r / 'student' / 'model.pt'}",
        ],
        1,
        "does not fit 'zoo:digits-cnn-large'",
    ),
    (
        "student-ckpt-of-teacher",
        "architecture",
        _pipeline_with(lambda t, r: f"distill.checkpoint={r / 'teacher' / 'model.pt'}"),
        1,
        "does not fit 'zoo:digits-cnn-small'",
    ),
    (
        "export-ckpt-of-teacher",
        "architecture",
        lambda t, r: ["export", r, "--checkpoint", r / "teacher" / "model.pt"],
        1,
        "does not fit",
    ),
    # recipes: unknown keys, wrong types, out-of-range values
    ("unknown-key", "recipe", _pipeline("distill.epochz=1"), 1, "did you mean 'distill.epochs'"),
    ("unknown-section", "recipe", _pipeline("distil.epochs=1"), 1, "unknown section 'distil'"),
    (
        "wrong-type",
        "recipe",
        _pipeline("distill.epochs=three"),
        1,
        "distill.epochs must be an integer",
    ),
    (
        "negative-epochs",
        "recipe",
        _pipeline("teacher.epochs=-1"),
        1,
        "teacher.epochs = -1 must be >= 0",
    ),
    (
        "temperature-zero",
        "recipe",
        _pipeline("distill.temperature=0"),
        1,
        "distill.temperature = 0.0 must be > 0.0",
    ),
    (
        "alpha-over-one",
        "recipe",
        _pipeline("distill.kd_weight=1.5"),
        1,
        "must be in [0, 1] with weighting 'alpha'",
    ),
    (
        "fraction-range",
        "recipe",
        _pipeline("data.val_fraction=0.9"),
        1,
        "data.val_fraction = 0.9 must be <= 0.5",
    ),
    ("batch-zero", "recipe", _pipeline("benchmark.batch_sizes=[0]"), 1, "must be >= 1"),
    (
        "iterations-zero",
        "recipe",
        lambda t, r: ["benchmark", r, "--set", "benchmark.min_iters=0"],
        1,
        "benchmark.min_iters = 0 must be >= 1",
    ),
    ("bad-override", "recipe", _pipeline("distill"), 1, "expected section.key=value"),
    # unknown targets, losses and model names
    ("unknown-target", "name", _pipeline("compile.targets=['nope']"), 1, "unknown target 'nope'"),
    (
        "unknown-target-compile",
        "name",
        lambda t, r: ["compile", r, "--target", "nope"],
        1,
        "unknown target 'nope'; known:",
    ),
    (
        "unknown-loss",
        "name",
        _pipeline("distill.kd_loss=nope"),
        1,
        "distill.kd_loss = 'nope' must be one of",
    ),
    (
        "unknown-zoo-model",
        "name",
        _pipeline("distill.student=zoo:nope"),
        1,
        "unknown zoo model 'nope'",
    ),
    (
        "unknown-spec-form",
        "name",
        _pipeline("teacher.model=resnet"),
        1,
        "model spec 'resnet': no such file; use zoo:NAME",
    ),
    (
        "unknown-precision",
        "name",
        lambda t, r: [
            "compile",
            r,
            "--target",
            _file(t, "p.toml", b'backend = "onnxruntime"\ndevice = "cpu"\nprecision = "fp64"\n'),
        ],
        1,
        "unknown precision 'fp64'",
    ),
    # data with NaN, wrong shapes, labels out of range
    (
        "data-nan",
        "data",
        _pipeline_with(
            lambda t, r: _npz(t, x=np.full((40, 1, 8, 8), np.nan, np.float32), y=np.arange(40) % 2)
        ),
        1,
        "NaN",
    ),
    (
        "data-shape",
        "data",
        _pipeline_with(
            lambda t, r: _npz(t, x=np.zeros((40, 8, 8), np.float32), y=np.arange(40) % 2)
        ),
        1,
        "must be (N, C, H, W)",
    ),
    (
        "data-labels",
        "data",
        _pipeline_with(
            lambda t, r: _npz(t, x=np.zeros((40, 1, 8, 8), np.float32), y=np.arange(40) - 5)
        ),
        1,
        "integer class ids",
    ),
    (
        "data-length",
        "data",
        _pipeline_with(
            lambda t, r: _npz(t, x=np.zeros((40, 1, 8, 8), np.float32), y=np.arange(30) % 2)
        ),
        1,
        "labels (30,) for 40 inputs; give one class id per input",
    ),
    # inputs of the wrong shape to benchmark
    (
        "benchmark-needs-shape",
        "input",
        lambda t, r: ["benchmark", _onnx_input(["N", "C", 8, 8])(t, r), "--quick"],
        1,
        "give the full shape",
    ),
    (
        "benchmark-static-batch",
        "input",
        lambda t, r: [
            "benchmark",
            _onnx_input([1, 1, 8, 8])(t, r),
            "--quick",
            "--batch-sizes",
            "4",
        ],
        1,
        "static batch of 1",
    ),
    (
        "benchmark-shape-rank",
        "input",
        lambda t, r: ["benchmark", _onnx_input(["N", "C", 8, 8])(t, r), "--shape", "1,8,8"],
        1,
        "--shape has 3 dims",
    ),
    (
        "teacher-onnx-nhwc",
        "input",
        lambda t, r: _pipeline(
            f"teacher.model={_onnx_input(['N', 8, 8, 1])(t, r)}", "teacher.epochs=0"
        )(t, r),
        1,
        "input 'x' is channels-last (N, 8, 8, 1) (NHWC), the data is channels-first",
    ),
    (
        "teacher-onnx-double",
        "input",
        lambda t, r: _pipeline(
            f"teacher.model={_onnx_input(['N', 64], 'DOUBLE')(t, r)}", "teacher.epochs=0"
        )(t, r),
        1,
        "input 'x' is float64 (N, 64), the data is float32 (N, 1, 8, 8)",
    ),
    # output paths that exist, are read-only, or are files where a folder is expected
    (
        "out-is-file",
        "output",
        lambda t, r: ["distill-and-export", "--out", _file(t, "f", b"x")],
        2,
        "is a file",
    ),
    (
        "out-read-only",
        "output",
        lambda t, r: ["train-teacher", "/proc/kdexport-run", *FAST_ARGS],
        1,
        "/proc/kdexport-run",
    ),
    ("package-out-is-dir", "output", lambda t, r: ["package", r, "-o", t], 2, "is a directory"),
    (
        "package-out-parent-file",
        "output",
        lambda t, r: ["package", r, "-o", _file(t, "f", b"x") / "b.kdx.tar.gz"],
        1,
        "b.kdx.tar.gz",
    ),
    ("report-out-is-file", "output", lambda t, r: ["report", _file(t, "f", b"x")], 2, "is a file"),
    # kdexport package MODEL.onnx: a file that is not ONNX, --shape mistakes, a taken folder
    (
        "package-onnx-not-onnx",
        "corrupt",
        lambda t, r: ["package", _file(t, "m.onnx", b"junk"), "-o", t / "b.kdx.tar.gz"],
        1,
        "not a readable ONNX model",
    ),
    (
        "package-onnx-symbolic-axis",
        "input",
        lambda t, r: ["package", _onnx_input(["N", "K"])(t, r), "-o", t / "b.kdx.tar.gz"],
        1,
        "axis 1 ('K') is symbolic; give the full shape, e.g. --shape 1,K",
    ),
    (
        "package-onnx-shape-not-an-input",
        "input",
        lambda t, r: ["package", _onnx_input(["N", 8])(t, r), "--dir", t / "b", "--shape", "z=1,8"],
        1,
        "--shape names 'z', which is not an input of m.onnx",
    ),
    (
        "package-onnx-shape-fixed-axis",
        "input",
        lambda t, r: ["package", _onnx_input(["N", 8])(t, r), "--dir", t / "b", "--shape", "1,9"],
        1,
        "--shape gives input 'x' axis 1 = 9 but m.onnx fixes it at 8",
    ),
    (
        "package-onnx-dir-taken",
        "output",
        lambda t, r: ["package", _onnx_input(["N", 8])(t, r), "--dir", t],  # holds m.onnx
        1,
        "exists and is not a bundle; choose another --dir or remove it",
    ),
    (
        "package-onnx-with-teacher",
        "usage",
        lambda t, r: ["package", _onnx_input(["N", 8])(t, r), "--dir", t / "b", "--with-teacher"],
        1,
        "--target, --with-teacher and --plan need a run directory",
    ),
    (
        "package-run-with-shape",
        "usage",
        lambda t, r: ["package", r, "-o", t / "b.tar.gz", "--shape", "1,1,8,8"],
        1,
        "--shape is for an ONNX file",
    ),
    # usage
    ("unknown-option", "usage", lambda t, r: ["compile", "--nope"], 2, "No such option"),
]


@pytest.mark.parametrize(
    ("case", "category", "build", "code", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input(run_copy, tmp_path, case, category, build, code, message):
    work = tmp_path / "work"
    work.mkdir()
    argv = build(work, run_copy)
    if code == 1:
        fails(*argv, message=message)
    else:
        result = kdx(*argv, code=code)
        assert message in result.stderr and "Traceback" not in result.output + result.stderr
    out = work / "o" if (work / "o").exists() else work / "out"
    assert not (out / "manifest.json").exists() and not (out / "report.md").exists()
    for stage in ("teacher", "student", "export", "compile", "benchmark"):
        assert not leftovers(run_copy / stage) and not leftovers(out / stage)


def test_at_least_forty_cases_in_every_category():
    categories = {c[1] for c in CASES}
    assert len(CASES) >= 40
    assert categories == {
        "path",
        "empty",
        "corrupt",
        "architecture",
        "recipe",
        "name",
        "data",
        "input",
        "output",
        "usage",
    }


def test_pipeline_fails_before_training(tmp_path):
    result = kdx(
        "distill-and-export",
        "--out",
        tmp_path / "o",
        *FAST_ARGS,
        "--set",
        "distill.student=zoo:nope",
        code=1,
    )
    assert "teacher" not in result.stderr.splitlines()[0]


def test_unavailable_target(run_copy):
    from kdexport.backends.profiles import load_target

    if load_target("ort-cuda").unavailable_reason() is None:
        pytest.skip("CUDA is available here")
    result = kdx("compile", run_copy, "--target", "ort-cuda", code=1)
    assert "'ort-cuda' is not available here" in result.stderr
    assert (run_copy / "compile" / "manifest.json").is_file()  # the old compile is intact


def test_debug_shows_the_exception(tmp_path):
    result = kdx("--debug", "export", tmp_path / "run", code=1)
    assert type(result.exception).__name__ == "KdxError"


def test_interrupted_stage_is_named(run_copy):
    shutil.move(run_copy / "export", run_copy / ".export.killed.tmp")
    result = kdx("compile", run_copy, code=1)
    assert "was interrupted while being written" in result.stderr


def test_output_cut_short_by_the_reader_is_quiet():
    """`kdexport targets | head -1`: the closed pipe ends the command without an error line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "kdexport.cli", "targets"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
    assert proc.returncode in (0, 141), stderr
    assert "error" not in stderr and "Traceback" not in stderr, stderr


_WITHOUT_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["kdexport", "distill-and-export", "--out", sys.argv[1]]
from kdexport.cli import main
main()
"""


def test_a_python_without_torch_is_told_how_to_get_it(tmp_path):
    """A Python without PyTorch (not .venv's): one line naming the package and the fix, exit 1."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "run")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert (
        line.startswith("error: this command needs the torch package") and "docs/install.md" in line
    )
    assert "unexpected" not in line
