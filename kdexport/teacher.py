"""The ``train_teacher`` stage, and the run's teacher as later stages load it.

The teacher is trained with CE alone by ``trainer.fit`` (the same loop as distillation, with no
KD term), or imported: a checkpoint trained further, or a complete model file (TorchScript,
``.pt2``, ONNX from any framework) used as it is. A complete teacher with the same parameters and
data is reused; a killed training continues with ``resume`` from ``RUN/checkpoints/teacher.pt``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Annotated, NotRequired

import torch
from torch import nn

from kdexport.artifact import Artifact, sha256
from kdexport.context import Run
from kdexport.data import Splits, what_is_read
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy
from kdexport.losses import Objective
from kdexport.onnx_teacher import KINDS, OnnxModel, TeacherView, summary
from kdexport.options import OneOf, Range, stage_options
from kdexport.progress import quiet
from kdexport.rundir import Loaded
from kdexport.train.loop import (
    Augment,
    BatchSize,
    Device,
    Epochs,
    Job,
    LearningRate,
    Patience,
    Placement,
    Pool,
    Precision,
    Schedule,
    Session,
    TrainedModel,
    fit,
    identity_of,
    predict,
    save_model,
)
from kdexport.train.parallel import cluster, publish
from kdexport.zoo import create_model, is_model_file, load_checkpoint


class TeacherChecks(TrainedModel):
    """RUN/teacher's checks (JSON in its manifest, so a TypedDict: it describes what is on disk
    at no run-time cost): ``save_model``'s figures, or for an imported model file the same
    figures with ``epochs_run`` 0, and for an ONNX teacher what it reads and how."""

    onnx_teacher: NotRequired[TeacherView]


def teacher_file(art: Artifact) -> str:
    """The name of the file in RUN/teacher that holds the teacher."""
    return next(n for n in art.manifest["files"] if n.startswith("model."))


def teacher_sha256(art: Artifact) -> str:
    """The sha256 of the teacher's weights (or model file), from its manifest."""
    return art.manifest["files"][teacher_file(art)]["sha256"]


def teacher_identity(art: Artifact) -> str:
    """What the teacher's outputs depend on: its weights (or model file) and, for an ONNX
    teacher, the output it reads and as what (the teacher cache and resume compare it)."""
    checks: TeacherChecks = art.checks
    view = checks.get("onnx_teacher")
    sha = teacher_sha256(art)
    return f"{sha}:{view['output']}:{view['output_kind']}" if view else sha


def load_teacher(run: Run) -> Loaded:
    """The trained (or imported) teacher of a run directory, in eval mode; an ONNX teacher reads
    the output its artifact recorded, as what it recorded (``teacher.output_kind`` resolved)."""
    art, splits = run.open("teacher"), run.splits()
    spec, weights = art.parameters["model"], art.file(teacher_file(art))
    if is_model_file(spec):
        checks: TeacherChecks = art.checks
        view = checks.get("onnx_teacher") or {}
        model = create_model(
            str(weights),
            0,
            0,
            art.parameters["trust_pickle"],
            output=view.get("output", ""),
            output_kind=view.get("output_kind", "auto"),
            sample_shape=splits.input_shape,
        )
        return Loaded(model, art)
    model = create_model(spec, splits.num_classes, splits.input_shape[0])
    return Loaded(load_checkpoint(model, weights, spec), art)


def build_teacher(opts: dict, splits: Splits) -> nn.Module:
    """The teacher of the [teacher] options, before training: built, loaded or imported."""
    spec = opts["model"]
    net = create_model(
        spec,
        splits.num_classes,
        splits.input_shape[0],
        opts["trust_pickle"],
        output=opts["output"],
        output_kind=opts["output_kind"],
        sample_shape=splits.input_shape,
    )
    if is_model_file(spec) and (opts["epochs"] or opts["checkpoint"]):
        raise KdxError(
            f"teacher.model '{spec}' is a complete model file, used as it is: set "
            "teacher.epochs = 0 and teacher.checkpoint = ''"
        )
    if isinstance(net, OnnxModel):  # output_kind "auto": decided on the data, before training
        net.resolve((splits.x_val if len(splits.x_val) else splits.x_train).head(512))
    return load_checkpoint(net, opts["checkpoint"], spec) if opts["checkpoint"] else net


def _cached_teacher(out: Path, params: dict) -> Artifact | None:
    if not (out / "manifest.json").is_file():
        return None
    try:
        cached = Artifact.open(out, "teacher", "")
    except KdxError:
        return None
    return cached if cached.parameters == params else None


def train_teacher(
    run: Run,
    *,
    model: str = "zoo:digits-cnn-large",
    checkpoint: str = "",
    trust_pickle: bool = False,
    output: str = "",
    output_kind: Annotated[str, OneOf(KINDS)] = "auto",
    epochs: Epochs = 12,
    lr: LearningRate = 2e-3,
    batch_size: BatchSize = 64,
    weight_decay: Annotated[float, Range(0.0)] = 5e-4,
    schedule: Schedule = "cosine",
    patience: Patience = 0,
    augment: Augment = "none",
    precision: Precision = "fp32",
    device: Device = "auto",
    data_placement: Placement = "auto",
    seed: Annotated[int, Range(0)] = 0,
) -> Artifact:
    """Train the teacher with CE (or import ``checkpoint`` and train it ``epochs`` more).

    ``model`` may also be a complete model file (TorchScript, .pt2, ONNX; a pickle only with
    ``trust_pickle``), used as it is with ``epochs = 0``. Writes RUN/teacher; a complete teacher
    with the same parameters and data is reused unless ``retrain``.
    ONNX teachers: ``output`` names the output holding class scores (default: the only float
    (batch, classes) one); ``output_kind`` says whether they are logits or probabilities
    (``auto``: probabilities when every row on the data is non-negative and sums to 1). What was
    read, and how, goes into the artifact's checks (``onnx_teacher``).
    """
    opts = stage_options(train_teacher, locals())
    splits, progress = run.splits(), run.progress
    torch.manual_seed(seed)  # seeds the initial weights
    net = build_teacher(opts, splits)
    params = {**opts, "data": what_is_read(run.data), "data_fingerprint": splits.fingerprint()}
    if is_model_file(model):
        params["model_sha256"] = sha256(Path(model))
    out = run.folder("teacher")
    if not run.retrain and (cached := _cached_teacher(out, params)):
        checks: TeacherChecks = cached.checks
        progress("teacher (cached)", 1, 1, f"val_acc={checks['val_accuracy']:.3f}")
        return cached
    with cluster(device) as c:
        history = []
        if epochs:
            pool = Pool(splits.x_train, torch.from_numpy(splits.y_train))
            steps = math.ceil(len(pool.y) / batch_size)
            augmentation = run.modality.augmentation(augment, run.data)
            job = Job(net, Objective({"ce": 1.0}), pool, steps, augment=augmentation)
            session = Session(
                "teacher",
                progress if c.main else quiet,
                c,
                checkpoint=run.folder("checkpoints") / "teacher.pt",
                resume=run.resume,
                identity=identity_of(stage="teacher", **params),
            )
            history = fit(job, (splits.x_val, splits.y_val), opts, session)

        def fill(writer) -> None:
            if is_model_file(model):
                shutil.copyfile(model, writer.path / f"model{Path(model).suffix}")
                if isinstance(net, OnnxModel):
                    writer.checks["onnx_teacher"] = net.describe()
                    progress("teacher", 1, 1, f"ONNX teacher {summary(net.describe())}")
                imported: TrainedModel = {
                    "val_accuracy": accuracy(predict(net, splits.x_val), splits.y_val),
                    "test_accuracy": accuracy(predict(net, splits.x_test), splits.y_test),
                    "epochs_run": 0,
                }
                writer.checks.update(imported)
            else:
                save_model(writer, net.cpu(), splits, history)

        return publish(c, out, "teacher", params, [], fill)
