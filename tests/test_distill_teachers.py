"""Every teacher form teaches: a zoo model's weights as TorchScript, a torch.export program, an
ONNX model run by ONNX Runtime, and (trusted only) a pickled module; bad teacher files fail with
one clear line."""

import shutil

import onnx
import pytest
import torch
from conftest import fails, kdx

from kdexport.context import Run
from kdexport.distill import distill
from kdexport.pipeline import load_recipe
from kdexport.teacher import train_teacher

TINY = [
    "teacher.model=zoo:mlp-tiny",
    "teacher.epochs=3",
    "distill.student=zoo:mlp-tiny",
    "distill.epochs=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A teacher trained by kdexport, and the same teacher saved in every file form."""
    root = tmp_path_factory.mktemp("teachers")
    r = load_recipe(overrides=TINY)
    art = train_teacher(Run(root / "run", r["data"]), **r["teacher"])
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )
    model.load_state_dict(torch.load(art.file("model.pt"), weights_only=True))
    model.eval()
    example = torch.rand(4, 1, 8, 8)
    files = {"torchscript": root / "t.pt", "export": root / "t.pt2", "onnx": root / "t.onnx"}
    torch.jit.script(model).save(str(files["torchscript"]))
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(files["export"]))
    torch.onnx.export(
        model,
        (example,),
        str(files["onnx"]),
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    files["pickle"] = root / "full.pt"
    torch.save(model, files["pickle"])
    files["weights"] = art.file("model.pt")
    return art, files, r


@pytest.mark.backends
@pytest.mark.parametrize("form", ["torchscript", "export", "onnx"])
def test_model_file_teachers_teach(trained, tmp_path, form):
    art, files, r = trained
    run = tmp_path / "run"
    teacher = {**r["teacher"], "model": str(files[form]), "epochs": 0}
    imported = train_teacher(Run(run, r["data"]), **teacher)
    assert imported.checks["val_accuracy"] == pytest.approx(art.checks["val_accuracy"])
    assert (run / "teacher" / f"model{files[form].suffix}").is_file()
    student = distill(Run(run, r["data"]), **r["distill"])
    assert student.checks["epochs_run"] == 1


def test_a_pickled_teacher_needs_trust(trained, tmp_path):
    art, files, _ = trained
    sets = [*TINY, f"teacher.model={files['pickle']}", "teacher.epochs=0"]
    args = [a for s in sets for a in ("--set", s)]
    fails(
        "train-teacher", tmp_path / "run", *args, message="is a pickled model: loading it runs code"
    )
    assert not (tmp_path / "run" / "teacher").exists()
    out = kdx("train-teacher", tmp_path / "run", *args, "--set", "teacher.trust_pickle=true").stdout
    assert "test accuracy" in out
    kdx("distill", tmp_path / "run")  # the teacher artifact remembers the trust


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["teacher.model={weights}", "teacher.epochs=0"],
            "holds weights only; name the architecture",
        ),
        (
            ["teacher.model={onnx}"],
            "is a complete model file, used as it is: set teacher.epochs = 0",
        ),
        (["teacher.model={bad}", "teacher.epochs=0"], "ONNX Runtime cannot load it"),
        (
            ["teacher.model=missing.onnx", "teacher.epochs=0"],
            "model spec 'missing.onnx': no such file",
        ),
        (
            [
                "teacher.model={onnx}",
                "teacher.epochs=0",
                "distill.feature_loss='attention'",
                "distill.student_layer='1'",
                "distill.teacher_layer='1'",
            ],
            "distill.teacher_layer '1' is not a layer of the teacher",
        ),
    ],
)
def test_bad_teachers(trained, tmp_path, sets, message):
    _, files, _ = trained
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    names = {k: str(v) for k, v in files.items()} | {"bad": str(bad)}
    args = [a for s in [*TINY, *sets] for a in ("--set", s.format(**names))]
    fails("distill-and-export", "--out", tmp_path / "run", *args, message=message)


def test_an_edited_model_file_is_imported_again(trained, tmp_path):
    _, files, r = trained
    mine = tmp_path / "t.onnx"
    shutil.copyfile(files["onnx"], mine)
    teacher = {**r["teacher"], "model": str(mine), "epochs": 0}
    first = train_teacher(Run(tmp_path / "run", r["data"]), **teacher)
    assert train_teacher(Run(tmp_path / "run", r["data"]), **teacher).manifest == first.manifest
    model = onnx.load(str(mine))
    onnx.helper.set_model_props(model, {"edited": "yes"})  # the same model, other bytes
    onnx.save(model, str(mine))
    assert train_teacher(Run(tmp_path / "run", r["data"]), **teacher).manifest != first.manifest
