"""The training stages: ``train_teacher`` (CE only) and ``distill`` (CE + KD from the teacher).

Both run one loop (``_fit``): AdamW, cosine schedule, validation every epoch, the best
validation checkpoint kept. The teacher's logits over the training split are computed once and
reused every epoch: the inputs are not augmented, so they cannot change.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from kdexport.artifact import Artifact
from kdexport.data import Splits, load_splits
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy
from kdexport.losses import Objective
from kdexport.recipe import OneOf, Range
from kdexport.zoo import create_model, load_checkpoint

Progress = Callable[[str, int, int, str], None]
_EPOCHS = Range(0, 10_000)
_LR = Range(0.0, 10.0, lo_open=True)
_BATCH = Range(1, 1 << 16)


def _quiet(stage: str, done: int, total: int, info: str) -> None:
    pass


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` (eval mode) for ``x``, in float32 numpy."""
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _fit(
    model, objective, splits: Splits, teacher_logits, opts: dict, label: str, progress
) -> list:
    """Train ``model`` in place; keep the weights of the best validation epoch."""
    gen = torch.Generator().manual_seed(opts["seed"])
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    t = torch.from_numpy(teacher_logits) if teacher_logits is not None else torch.zeros(len(y), 0)
    steps = max(1, math.ceil(len(y) / opts["batch_size"]))
    optim = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(1, opts["epochs"] * steps))
    best, best_acc, history = copy.deepcopy(model.state_dict()), -1.0, []
    for epoch in range(opts["epochs"]):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        sums: dict[str, float] = {}
        for step in range(steps):
            idx = order[step * opts["batch_size"] : (step + 1) * opts["batch_size"]]
            loss, terms = objective(model(x[idx]), t[idx], y[idx])
            if not math.isfinite(float(loss.detach())):
                bad = [k for k, v in terms.items() if not math.isfinite(v)] or ["total"]
                raise KdxError(
                    f"{label}: non-finite loss ({', '.join(bad)}) at epoch {epoch + 1} step {step + 1};"
                    " lower the learning rate or check the data for NaN"
                )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / steps
        val_acc = accuracy(predict(model, splits.x_val), splits.y_val)
        history.append({"epoch": epoch + 1, "val_accuracy": val_acc, **sums})
        if val_acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), val_acc
        info = " ".join(f"{k}={v:.3f}" for k, v in sums.items()) + f" val_acc={val_acc:.3f}"
        progress(label, epoch + 1, opts["epochs"], info)
    model.load_state_dict(best)
    return history


def _save_model(writer, model, splits: Splits, history: list) -> None:
    torch.save(model.state_dict(), writer.path / "model.pt")
    (writer.path / "history.json").write_text(json.dumps(history, indent=1))
    writer.checks["val_accuracy"] = accuracy(predict(model, splits.x_val), splits.y_val)
    writer.checks["test_accuracy"] = accuracy(predict(model, splits.x_test), splits.y_test)
    writer.checks["epochs_run"] = len(history)


def load_teacher(run_dir: Path, splits: Splits) -> tuple[torch.nn.Module, Artifact]:
    """The trained teacher of a run directory, in eval mode."""
    art = Artifact.open(Path(run_dir) / "teacher", "teacher", f"kdexport train-teacher {run_dir}")
    model = create_model(art.parameters["model"], splits.num_classes, splits.input_shape[0])
    return load_checkpoint(model, art.file("model.pt"), art.parameters["model"]), art


def load_student(run_dir: Path, splits: Splits) -> tuple[torch.nn.Module, Artifact]:
    """The distilled student of a run directory, in eval mode."""
    art = Artifact.open(Path(run_dir) / "student", "student", f"kdexport distill {run_dir}")
    model = create_model(art.parameters["student"], splits.num_classes, splits.input_shape[0])
    return load_checkpoint(model, art.file("model.pt"), art.parameters["student"]), art


def train_teacher(
    run_dir: str | Path,
    data: dict,
    retrain: bool = False,
    progress: Progress = _quiet,
    *,
    model: str = "zoo:digits-cnn-large",
    checkpoint: str = "",
    epochs: Annotated[int, _EPOCHS] = 12,
    lr: Annotated[float, _LR] = 2e-3,
    batch_size: Annotated[int, _BATCH] = 64,
    weight_decay: Annotated[float, Range(0.0)] = 5e-4,
    seed: Annotated[int, Range(0)] = 0,
) -> Artifact:
    """Train the teacher with CE (or import ``checkpoint`` and train it ``epochs`` more).

    Writes RUN/teacher; a complete teacher with the same parameters and data is reused unless
    ``retrain``.
    """
    splits = load_splits(**data)
    params = {
        "model": model,
        "checkpoint": checkpoint,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "seed": seed,
        "data": data,
        "data_fingerprint": splits.fingerprint(),
    }
    out = Path(run_dir) / "teacher"
    if not retrain and (out / "manifest.json").is_file():
        try:
            cached = Artifact.open(out, "teacher", "")
        except KdxError:
            cached = None
        if cached and cached.parameters == params:
            progress("teacher (cached)", 1, 1, f"val_acc={cached.checks['val_accuracy']:.3f}")
            return cached
    torch.manual_seed(seed)  # seeds the initial weights and dropout
    net = create_model(model, splits.num_classes, splits.input_shape[0])
    if checkpoint:
        load_checkpoint(net, checkpoint, model)
    objective = Objective("kd", "alpha", kd_weight=0.0, temperature=1.0)
    with Artifact.create(out, "teacher", params) as writer:
        history = _fit(net, objective, splits, None, params, "teacher", progress)
        _save_model(writer, net, splits, history)
    return writer.artifact


def distill(
    run_dir: str | Path,
    data: dict,
    progress: Progress = _quiet,
    *,
    student: str = "zoo:digits-cnn-small",
    checkpoint: str = "",
    epochs: Annotated[int, _EPOCHS] = 40,
    lr: Annotated[float, _LR] = 1e-2,
    batch_size: Annotated[int, _BATCH] = 64,
    weight_decay: Annotated[float, Range(0.0)] = 0.0,
    kd_loss: Annotated[str, OneOf(("kd", "logit_mse"))] = "kd",
    weighting: Annotated[str, OneOf(("alpha", "lambda"))] = "alpha",
    kd_weight: Annotated[float, Range(0.0)] = 0.9,
    temperature: Annotated[float, Range(0.0, 100.0, lo_open=True)] = 4.0,
    seed: Annotated[int, Range(0)] = 0,
) -> Artifact:
    """Distill the run's teacher into ``student``; writes RUN/student.

    ``checkpoint``: a state_dict to start the student from (default: fresh weights).
    ``weighting="alpha"``: L = (1-w)·CE + w·KD (w = ``kd_weight`` must be <= 1);
    ``weighting="lambda"``: L = CE + w·KD.
    """
    check_weighting(weighting, kd_weight)
    splits = load_splits(**data)
    teacher, teacher_art = load_teacher(run_dir, splits)
    torch.manual_seed(seed)  # seeds the initial weights and dropout
    net = create_model(student, splits.num_classes, splits.input_shape[0])
    check_pair(teacher, net, splits)
    params = {
        "student": student,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "kd_loss": kd_loss,
        "weighting": weighting,
        "kd_weight": kd_weight,
        "temperature": temperature,
        "seed": seed,
        "data": data,
        "data_fingerprint": splits.fingerprint(),
    }
    teacher_logits = predict(teacher, splits.x_train)
    objective = Objective(kd_loss, weighting, kd_weight, temperature)
    with Artifact.create(Path(run_dir) / "student", "student", params, [teacher_art]) as writer:
        history = _fit(net, objective, splits, teacher_logits, params, "distill", progress)
        _save_model(writer, net, splits, history)
    return writer.artifact


def check_weighting(weighting: str, kd_weight: float) -> None:
    """The seed's form (1 - w)·CE + w·KD needs w in [0, 1]."""
    if weighting == "alpha" and kd_weight > 1:
        raise KdxError(f"distill.kd_weight = {kd_weight} must be in [0, 1] with weighting 'alpha'")


def check_pair(teacher, student, splits: Splits) -> None:
    """Pre-flight: both models take the data's inputs and agree on the number of classes."""
    x = torch.from_numpy(splits.x_val[:2])
    shapes = {}
    for name, m in (("teacher", teacher), ("student", student)):
        try:
            with torch.no_grad():
                shapes[name] = tuple(m.eval()(x).shape)
        except Exception as e:  # any failure here means the model does not fit the data
            raise KdxError(
                f"the {name} cannot run on inputs of shape {tuple(x.shape)}: {e}"
            ) from None
    if shapes["teacher"] != shapes["student"] or shapes["student"][1] != splits.num_classes:
        raise KdxError(
            f"teacher outputs {shapes['teacher']}, student {shapes['student']}; both need "
            f"{splits.num_classes} classes"
        )
