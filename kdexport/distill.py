"""The training stages: ``train_teacher`` (CE only) and ``distill`` (CE + KD from the teacher).

Both run ``trainer.fit``. The student learns from its labeled share of the training split
(``label_fraction``) and from the teacher's outputs on every training input plus the unlabeled
transfer set; with no random augmentation those outputs come from ``teacher_cache``. Under
``torchrun`` both stages train with DistributedDataParallel (see ``parallel``). A killed stage
continues with ``resume`` from ``RUN/checkpoints/STAGE.pt``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch import nn

from kdexport.artifact import Artifact, sha256
from kdexport.data import Splits, labeled_subset, load_splits
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy
from kdexport.losses import (
    FEATURE_LOSSES,
    LOGIT_LOSSES,
    UNLABELED,
    WEIGHTINGS,
    LayerTap,
    Objective,
    term_weights,
)
from kdexport.onnx_teacher import KINDS, OnnxModel, summary
from kdexport.parallel import DEVICES, PRECISIONS, Cluster, cluster
from kdexport.preflight import check_models, check_weighting
from kdexport.qat import fake_quantized
from kdexport.recipe import OneOf, Range
from kdexport.teacher_cache import cache_key, teacher_outputs
from kdexport.trainer import (
    AUGMENTATIONS,
    PLACEMENTS,
    SCHEDULES,
    Job,
    Pool,
    Progress,
    Session,
    fit,
    identity_of,
    predict,
)
from kdexport.trainer import quiet as _quiet
from kdexport.zoo import create_model, is_model_file, load_checkpoint

_EPOCHS = Range(0, 10_000)
_LR = Range(0.0, 10.0, lo_open=True)
_BATCH = Range(1, 1 << 16)
Schedule = Annotated[str, OneOf(SCHEDULES)]
Patience = Annotated[int, Range(0)]
Augment = Annotated[str, OneOf(AUGMENTATIONS)]
Precision = Annotated[str, OneOf(PRECISIONS)]
Device = Annotated[str, OneOf(DEVICES)]
Placement = Annotated[str, OneOf(PLACEMENTS)]


def _options(fn: Callable, values: dict) -> dict:
    """The recipe options of stage ``fn`` (its keyword-only parameters), from its ``locals()``."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: values[p.name] for p in params if p.kind is p.KEYWORD_ONLY}


def _teacher_file(art: Artifact) -> str:
    """The name of the file in RUN/teacher that holds the teacher."""
    return next(n for n in art.manifest["files"] if n.startswith("model."))


def teacher_sha256(art: Artifact) -> str:
    """The sha256 of the teacher's weights (or model file), from its manifest."""
    return art.manifest["files"][_teacher_file(art)]["sha256"]


def teacher_identity(art: Artifact) -> str:
    """What the teacher's outputs depend on: its weights (or model file) and, for an ONNX
    teacher, the output it reads and as what (the teacher cache and resume compare it)."""
    view = art.checks.get("onnx_teacher")
    sha = teacher_sha256(art)
    return f"{sha}:{view['output']}:{view['output_kind']}" if view else sha


def load_teacher(run_dir: Path, splits: Splits) -> tuple[nn.Module, Artifact]:
    """The trained (or imported) teacher of a run directory, in eval mode; an ONNX teacher reads
    the output its artifact recorded, as what it recorded (``teacher.output_kind`` resolved)."""
    art = Artifact.open(Path(run_dir) / "teacher", "teacher", f"kdexport train-teacher {run_dir}")
    spec, weights = art.parameters["model"], art.file(_teacher_file(art))
    if is_model_file(spec):
        view = art.checks.get("onnx_teacher") or {}
        model = create_model(
            str(weights),
            0,
            0,
            art.parameters["trust_pickle"],
            output=view.get("output", ""),
            output_kind=view.get("output_kind", "auto"),
            sample_shape=splits.input_shape,
        )
        return model, art
    model = create_model(spec, splits.num_classes, splits.input_shape[0])
    return load_checkpoint(model, weights, spec), art


def load_student(run_dir: Path, splits: Splits) -> tuple[nn.Module, Artifact]:
    """The distilled student of a run directory, in eval mode."""
    art = Artifact.open(Path(run_dir) / "student", "student", f"kdexport distill {run_dir}")
    model = create_model(art.parameters["student"], splits.num_classes, splits.input_shape[0])
    return load_checkpoint(model, art.file("model.pt"), art.parameters["student"]), art


def _new_teacher(opts: dict, splits: Splits) -> nn.Module:
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
        net.resolve((splits.x_val if len(splits.x_val) else splits.x_train)[:512])
    return load_checkpoint(net, opts["checkpoint"], spec) if opts["checkpoint"] else net


def _new_student(opts: dict, splits: Splits) -> nn.Module:
    torch.manual_seed(opts["seed"])  # seeds the initial weights
    net = create_model(opts["student"], splits.num_classes, splits.input_shape[0])
    if opts["checkpoint"]:
        load_checkpoint(net, opts["checkpoint"], opts["student"])
    if not any(p.requires_grad for p in net.parameters()):
        raise KdxError(f"distill.student '{opts['student']}' has no trainable parameters")
    return net


def _save_model(writer, net: nn.Module, splits: Splits, history: list) -> None:
    torch.save(net.state_dict(), writer.path / "model.pt")
    (writer.path / "history.json").write_text(json.dumps(history, indent=1))
    writer.checks["val_accuracy"] = accuracy(predict(net, splits.x_val), splits.y_val)
    writer.checks["test_accuracy"] = accuracy(predict(net, splits.x_test), splits.y_test)
    writer.checks["epochs_run"] = len(history)
    writer.checks["data_placement"] = history[-1]["data"] if history else None


def publish(c: Cluster, out: Path, kind: str, params: dict, parents: list, fill) -> Artifact:
    """Process 0 writes the artifact (``fill(writer)``); the others wait, then open it."""
    if c.main:
        with Artifact.create(out, kind, params, parents) as writer:
            fill(writer)
        (out.parent / "checkpoints" / f"{kind}.pt").unlink(missing_ok=True)
    c.barrier()
    return writer.artifact if c.main else Artifact.open(out, kind, f"kdexport {kind}")


def _cached_teacher(out: Path, params: dict) -> Artifact | None:
    if not (out / "manifest.json").is_file():
        return None
    try:
        cached = Artifact.open(out, "teacher", "")
    except KdxError:
        return None
    return cached if cached.parameters == params else None


def train_teacher(
    run_dir: str | Path,
    data: dict,
    retrain: bool = False,
    progress: Progress = _quiet,
    resume: bool = False,
    *,
    model: str = "zoo:digits-cnn-large",
    checkpoint: str = "",
    trust_pickle: bool = False,
    output: str = "",
    output_kind: Annotated[str, OneOf(KINDS)] = "auto",
    epochs: Annotated[int, _EPOCHS] = 12,
    lr: Annotated[float, _LR] = 2e-3,
    batch_size: Annotated[int, _BATCH] = 64,
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
    opts = _options(train_teacher, locals())
    splits = load_splits(**data)
    torch.manual_seed(seed)  # seeds the initial weights
    net = _new_teacher(opts, splits)
    params = {**opts, "data": data, "data_fingerprint": splits.fingerprint()}
    if is_model_file(model):
        params["model_sha256"] = sha256(Path(model))
    out = Path(run_dir) / "teacher"
    if not retrain and (cached := _cached_teacher(out, params)):
        progress("teacher (cached)", 1, 1, f"val_acc={cached.checks['val_accuracy']:.3f}")
        return cached
    with cluster(device) as c:
        history = []
        if epochs:
            pool = Pool(torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train))
            job = Job(net, Objective({"ce": 1.0}), pool, math.ceil(len(pool.y) / batch_size))
            session = Session(
                "teacher",
                progress if c.main else _quiet,
                c,
                checkpoint=Path(run_dir) / "checkpoints" / "teacher.pt",
                resume=resume,
                identity=identity_of(stage="teacher", **params),
            )
            history = fit(job, _val(splits), opts, session)

        def fill(writer) -> None:
            if is_model_file(model):
                shutil.copyfile(model, writer.path / f"model{Path(model).suffix}")
                if isinstance(net, OnnxModel):
                    writer.checks["onnx_teacher"] = net.describe()
                    progress("teacher", 1, 1, f"ONNX teacher {summary(net.describe())}")
                writer.checks.update(
                    val_accuracy=accuracy(predict(net, splits.x_val), splits.y_val),
                    test_accuracy=accuracy(predict(net, splits.x_test), splits.y_test),
                    epochs_run=0,
                )
            else:
                _save_model(writer, net.cpu(), splits, history)

        return publish(c, out, "teacher", params, [], fill)


def check_recipe(data: dict, teacher: dict, student: dict) -> None:
    """Fail before any training on what can be checked cheaply: data, models, checkpoints."""
    check_weighting(student["weighting"], student["kd_weight"])
    splits = load_splits(**data)
    check_models(_new_teacher(teacher, splits), _new_student(student, splits), splits, student)


def _student_pool(splits: Splits, opts: dict, data_seed: int, scratch: bool) -> Pool:
    """KD: every training input and the transfer set, labels kept on the labeled share only.
    Scratch: the labeled share alone."""
    keep = labeled_subset(splits.y_train, opts["label_fraction"], data_seed)
    if scratch:
        x, y = splits.x_train[keep], splits.y_train[keep]
    else:
        x = np.concatenate([splits.x_train, splits.x_transfer])
        y = np.full(len(x), UNLABELED, np.int64)
        y[: len(keep)][keep] = splits.y_train[keep]
    return Pool(torch.from_numpy(x), torch.from_numpy(y))


def train_student(
    run_dir: Path,
    data_seed: int,
    splits: Splits,
    teacher: tuple[nn.Module, Artifact],
    opts: dict,
    session: Session,
    scratch: bool = False,
) -> tuple[nn.Module, list]:
    """Train the student of ``opts`` with KD from ``teacher`` (or from scratch, CE only, on the
    labeled share with the same number of steps); returns it with its history."""
    net = _new_student(opts, splits)
    model, art = teacher
    shapes = check_models(model, net, splits, opts)
    steps = math.ceil((len(splits.x_train) + len(splits.x_transfer)) / opts["batch_size"])
    pool = _student_pool(splits, opts, data_seed, scratch)
    if scratch:
        return net, fit(Job(net, Objective({"ce": 1.0}), pool, steps), _val(splits), opts, session)
    keys = ("kd_loss", "weighting", "kd_weight", "feature_loss", "feature_weight")
    objective = Objective(term_weights(*(opts[k] for k in keys)), opts["temperature"], shapes)
    device = session.cluster.device
    s_tap, t_tap = (None, None)
    if shapes:
        s_tap = LayerTap(net, opts["student_layer"], "student")
        t_tap = LayerTap(model, opts["teacher_layer"], "teacher")
    try:
        job = Job(net, objective, pool, steps, model.to(device), t_tap, s_tap)
        if opts["augment"] == "none":
            _cache_teacher_outputs(job, art, Path(run_dir) / "cache", splits, device)
        with fake_quantized(net) if opts["quant_aware"] else contextlib.nullcontext():
            history = fit(job, _val(splits), opts, session)
        return net, history
    finally:
        for tap in (s_tap, t_tap):
            if tap:
                tap.close()


def _cache_teacher_outputs(job: Job, art: Artifact, cache_dir: Path, splits: Splits, device):
    """Fill the pool with the teacher's outputs over it (inputs that do not change)."""
    x = job.pool.x.numpy()
    layer = job.teacher_tap.name if job.teacher_tap else ""
    key = cache_key(teacher_identity(art), x, splits.preprocessing, layer)
    logits, feature = teacher_outputs(job.teacher, x, key, cache_dir, job.teacher_tap, device)
    job.pool.teacher_logits = torch.from_numpy(logits)
    job.pool.teacher_feature = None if feature is None else torch.from_numpy(feature)


def _val(splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    return splits.x_val, splits.y_val


def student_params(opts: dict, data: dict, splits: Splits) -> dict:
    """What a student artifact (and a baseline of it) records as its parameters."""
    return {**opts, "data": data, "data_fingerprint": splits.fingerprint()}


def distill(
    run_dir: str | Path,
    data: dict,
    progress: Progress = _quiet,
    resume: bool = False,
    *,
    student: str = "zoo:digits-cnn-small",
    checkpoint: str = "",
    epochs: Annotated[int, _EPOCHS] = 40,
    lr: Annotated[float, _LR] = 1e-2,
    batch_size: Annotated[int, _BATCH] = 64,
    weight_decay: Annotated[float, Range(0.0)] = 0.0,
    kd_loss: Annotated[str, OneOf(LOGIT_LOSSES)] = "kd",
    weighting: Annotated[str, OneOf(WEIGHTINGS)] = "alpha",
    kd_weight: Annotated[float, Range(0.0)] = 0.9,
    temperature: Annotated[float, Range(0.0, 100.0, lo_open=True)] = 4.0,
    feature_loss: Annotated[str, OneOf(FEATURE_LOSSES)] = "none",
    feature_weight: Annotated[float, Range(0.0)] = 1.0,
    student_layer: str = "",
    teacher_layer: str = "",
    label_fraction: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 1.0,
    schedule: Schedule = "cosine",
    patience: Patience = 0,
    augment: Augment = "none",
    precision: Precision = "fp32",
    device: Device = "auto",
    data_placement: Placement = "auto",
    quant_aware: bool = False,
    seed: Annotated[int, Range(0)] = 0,
) -> Artifact:
    """Distill the run's teacher into ``student``; writes RUN/student (its weights alone).

    ``checkpoint``: a state_dict to start the student from (default: fresh weights).
    ``weighting="alpha"``: L = (1-w)·CE + w·KD (w = ``kd_weight`` must be <= 1);
    ``weighting="lambda"``: L = CE + w·KD; a feature loss adds ``feature_weight``·F.
    ``label_fraction``: the share of training labels the student sees (stratified, fixed by
    data.seed); the other training inputs teach through the teacher's outputs alone.
    ``quant_aware``: the student trains under simulated INT8 (``kdexport.qat``), so that the
    INT8 targets lose less accuracy when they quantize it.
    """
    opts = _options(distill, locals())
    check_weighting(weighting, kd_weight)
    splits = load_splits(**data)
    teacher_pair = load_teacher(run_dir, splits)
    params = student_params(opts, data, splits)
    teacher_art = teacher_pair[1]
    with cluster(device) as c:
        session = Session(
            "distill",
            progress if c.main else _quiet,
            c,
            checkpoint=Path(run_dir) / "checkpoints" / "student.pt",
            resume=resume,
            identity=identity_of(stage="distill", teacher=teacher_identity(teacher_art), **params),
        )
        net, history = train_student(run_dir, data["seed"], splits, teacher_pair, opts, session)

        def fill(writer) -> None:
            _save_model(writer, net.cpu(), splits, history)

        return publish(c, Path(run_dir) / "student", "student", params, [teacher_art], fill)
