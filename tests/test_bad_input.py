"""Bad input: one clear line on stderr, exit 1, no traceback, no run that looks complete.

The pipeline checks what it can before it trains anything (models, data, targets).
"""

import pytest
from conftest import FAST_ARGS, kdx


def _fails(*args, message: str):
    result = kdx(*args, code=1)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr  # one error line, last (progress may precede it)
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in result.output + result.stderr
    return result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "missing.toml"], "missing.toml: no such file"),
        (["--set", "distill.student=zoo:nope"], "unknown zoo model 'nope'"),
        (["--set", "distill.student=nope"], "use zoo:NAME or path/to/file.py:factory"),
        (["--set", "compile.targets=['nope']"], "unknown target 'nope'"),
        (["--set", "distill.epochz=1"], "did you mean 'distill.epochs'"),
        (["--set", "distill.temperature=0"], "distill.temperature = 0.0 must be > 0.0"),
        (["--set", "distill.kd_weight=1.5"], "must be in [0, 1] with weighting 'alpha'"),
        (["--set", "data.source=missing.npz"], "missing.npz: no such file"),
        (["--set", "teacher.checkpoint=missing.pt"], "checkpoint missing.pt: no such file"),
    ],
)
def test_pipeline_bad_input(tmp_path, args, message):
    out = tmp_path / "run"
    result = _fails("distill-and-export", "--out", out, *FAST_ARGS, *args, message=message)
    assert "teacher" not in result.stderr.splitlines()[0]  # failed before training
    assert not (out / "manifest.json").exists() and not (out / "report.md").exists()


def test_checkpoint_of_another_architecture(run_copy, tmp_path):
    student_weights = run_copy / "student" / "model.pt"
    _fails(
        "train-teacher",
        tmp_path / "run",
        "--set",
        f"teacher.checkpoint={student_weights}",
        message="does not fit 'zoo:digits-cnn-large'",
    )


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    _fails(
        "train-teacher",
        tmp_path / "run",
        "--set",
        f"teacher.checkpoint={bad}",
        message="not a readable weights-only state_dict",
    )


def test_stage_before_its_inputs(tmp_path):
    _fails("export", tmp_path / "run", message="run `kdexport train-teacher")
    _fails("benchmark", tmp_path / "run", message="run `kdexport compile")
    _fails("report", tmp_path / "run", message="run `kdexport train-teacher")


def test_unknown_and_unavailable_targets(run_copy):
    _fails("compile", run_copy, "--target", "nope", message="unknown target 'nope'; known:")
    from kdexport.targets import load_target

    if load_target("ort-cuda").unavailable_reason():
        _fails(
            "compile", run_copy, "--target", "ort-cuda", message="'ort-cuda' is not available here"
        )
    assert (run_copy / "compile" / "manifest.json").is_file()  # the old compile is intact


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file" in kdx("distill-and-export", "--out", f, code=2).stderr  # a usage error


def test_tampered_artifact(run_copy):
    (run_copy / "export" / "student.onnx").write_bytes(b"garbage")
    _fails("compile", run_copy, message="student.onnx: missing or changed since it was written")


def test_usage_error_exits_2():
    result = kdx("compile", "--nope", code=2)
    assert "No such option" in result.stderr


def test_debug_shows_the_exception(tmp_path):
    result = kdx("--debug", "export", tmp_path / "run", code=1)
    assert type(result.exception).__name__ == "KdxError"
