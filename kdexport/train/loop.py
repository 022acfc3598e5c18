"""The training loop shared by teacher training and distillation.

AdamW; an epoch is ``steps`` optimizer steps of exactly ``batch_size`` samples drawn from shuffled
passes over the pool (so a scratch baseline on fewer samples gets the same budget); a cosine or
step schedule over all steps, or cosine after a linear warm-up over the first tenth (transformers); validation after every epoch, the best epoch's weights kept,
early stopping after ``patience`` epochs without a better one.

Every epoch ends with a checkpoint (written to a temporary file, then renamed). The shuffling,
augmentation and dropout of epoch e are seeded from (seed, e), so a run killed at any point and
continued with ``resume`` ends with the same weights as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdexport import modalities
from kdexport.artifact import atomic_file
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy
from kdexport.losses import LayerTap, Objective, first_non_finite
from kdexport.modalities.contract import Augmentation
from kdexport.modalities.inputs import ArrayInputs, Inputs, in_order
from kdexport.options import OneOf, Range
from kdexport.progress import Progress
from kdexport.train.parallel import DEVICES, PRECISIONS, Cluster, autocast, check_precision
from kdexport.zoo import eval_mode

SCHEDULES = ("cosine", "step", "warmup-cosine")
# "none", and each modality's augmentations (image: shift; speech: its noise, gain and shift)
AUGMENTATIONS = ("none", *(a for m in modalities.every() for a in m.augmentations))
PLACEMENTS = ("auto", "device", "host")
# The option types the two training stages share (their recipe keys' bounds and choices).
Epochs = Annotated[int, Range(0, 10_000)]
LearningRate = Annotated[float, Range(0.0, 10.0, lo_open=True)]
BatchSize = Annotated[int, Range(1, 1 << 16)]
Schedule = Annotated[str, OneOf(SCHEDULES)]
Patience = Annotated[int, Range(0)]
Augment = Annotated[str, OneOf(AUGMENTATIONS)]
Precision = Annotated[str, OneOf(PRECISIONS)]
Device = Annotated[str, OneOf(DEVICES)]
Placement = Annotated[str, OneOf(PLACEMENTS)]
# "auto" copies the pool to the GPU if it takes at most this share of the GPU's free memory
AUTO_DEVICE_SHARE = 0.25


@dataclass
class Pool:
    """What the epochs draw batches from: inputs, labels (-1: unlabeled), cached teacher outputs.

    Inputs held in memory (``ArrayInputs``) are batched here; ``placement`` says where they stay
    while training on a GPU: ``"device"`` (copied once into the GPU's memory, the fastest) or
    ``"pinned host"`` (each batch gathered into page-locked memory and copied while the GPU works
    on the previous one); ``"cpu"`` when training on the CPU. Streamed inputs are read in their
    DataLoader workers (``"streamed"``, pinned on a GPU) and finished on the device.
    """

    x: Inputs
    y: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    teacher_feature: torch.Tensor | None = None
    placement: str = "cpu"

    def __post_init__(self) -> None:
        self._x = torch.from_numpy(self.x.array) if isinstance(self.x, ArrayInputs) else None
        if self._x is None:
            self.placement = "streamed"

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        named = (("_x", self._x), ("y", self.y))
        named += (
            ("teacher_logits", self.teacher_logits),
            ("teacher_feature", self.teacher_feature),
        )
        return [(n, t) for n, t in named if t is not None]

    def place(self, device: torch.device, option: str) -> None:
        """Put the pool where training on ``device`` reads it, as ``option`` (``PLACEMENTS``) says:
        ``"auto"`` is ``"device"`` when the pool takes at most ``AUTO_DEVICE_SHARE`` of the GPU's
        free memory, else ``"host"``. Streamed inputs stay streamed."""
        if device.type != "cuda":
            self.placement = "cpu" if self._x is not None else "streamed"
            return
        size = sum(t.nbytes for _, t in self._tensors())
        if option == "auto":
            free, _ = torch.cuda.mem_get_info(device)
            option = "device" if size <= AUTO_DEVICE_SHARE * free else "host"
        if option == "host" or self._x is None:
            self.placement = "pinned host" if self._x is not None else "streamed"
            return
        try:
            for name, t in self._tensors():
                setattr(self, name, t.to(device))
        except torch.cuda.OutOfMemoryError:
            raise KdxError(
                f"the training data ({size / 2**30:.2f} GiB) does not fit in the GPU's memory; "
                "set data_placement = 'host' (or 'auto') to keep it in pinned host memory"
            ) from None
        self.placement = "device"

    def batches(self, order: list[torch.Tensor], device: torch.device, view=None, seed: int = 0):
        """For each index tensor of ``order``: x (model inputs), y, teacher logits and feature
        (None where absent), on ``device``. ``view``: what a streamed reader draws per item."""
        rest = ("y", "teacher_logits", "teacher_feature")
        if self._x is not None:
            for idx in order:
                yield _take(self._x, idx, device), *(self._rows(n, idx, device) for n in rest)
            return
        pin = device.type == "cuda"
        stream = self.x.batches([i.numpy() for i in order], view, seed, pin)
        for rows, raw in stream:
            idx = torch.from_numpy(rows)
            x = self.x.finish(raw.to(device, non_blocking=pin))
            yield x, *(self._rows(n, idx, device) for n in rest)

    def _rows(self, name: str, idx: torch.Tensor, device: torch.device):
        t = getattr(self, name)
        return None if t is None else _take(t, idx, device)


def _take(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t[idx]`` on ``device``: from host memory, gathered into a pinned buffer (PyTorch's caching
    host allocator does not reuse it before the copy is done) and copied without blocking."""
    if t.device == device:
        return t[idx]
    staged = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    torch.index_select(t, 0, idx, out=staged)
    return staged.to(device, non_blocking=True)


@dataclass
class Job:
    """One training run: the model, its objective, its pool, and the teacher it learns from.
    The taps read what a feature loss compares: ``LayerTap`` (one layer) or, for the text
    losses, ``kdexport.modalities.text.features.TextTap`` (a transformer's hidden states or attentions)."""

    model: nn.Module
    objective: Objective
    pool: Pool
    steps: int
    teacher: nn.Module | None = None
    teacher_tap: LayerTap | None = None
    student_tap: LayerTap | None = None
    augment: Augmentation | None = None  # the modality's training augmentation


@dataclass
class Session:
    """How a run reports and where it keeps its checkpoint; ``identity`` must match to resume."""

    label: str
    progress: Progress
    cluster: Cluster
    checkpoint: Path | None = None
    resume: bool = False
    identity: dict | None = None


@torch.no_grad()
def predict(model: nn.Module, x: Inputs | np.ndarray) -> np.ndarray:
    """Logits of ``model`` (eval mode, on its own device) for ``x`` (streamed inputs read in
    their workers), in float32 numpy."""
    eval_mode(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = x if isinstance(x, Inputs) else ArrayInputs(x)
    order = in_order(inputs)
    out = [
        model(inputs.finish(batch.to(device))).float().cpu() for _, batch in inputs.batches(order)
    ]
    return torch.cat(out).numpy()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _epoch_order(n: int, steps: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``steps * batch`` indices: shuffled passes over 0..n-1, one after another."""
    need = steps * batch
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])[:need]


WARMUP = 0.1  # the share of the steps "warmup-cosine" warms up over


def _lr_factor(schedule: str, total: int) -> Callable[[int], float]:
    if schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if (
        schedule == "warmup-cosine"
    ):  # transformers: linear from 0 over the first tenth, cosine after
        warm = max(1, round(WARMUP * total))
        return lambda step: (
            (step + 1) / warm
            if step < warm
            else 0.5
            * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))
        )
    milestones = (total // 2, 3 * total // 4)  # x0.1 at half and three quarters of the steps
    return lambda step: 0.1 ** sum(step >= m for m in milestones)


class _State:
    """Everything a checkpoint holds: optimiser, schedule, scaler, best weights, history."""

    def __init__(self, job: Job, opts: dict):
        params = [*job.model.parameters(), *job.objective.parameters()]
        self.optim = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
        total = max(1, opts["epochs"] * job.steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, _lr_factor(opts["schedule"], total)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=opts["precision"] == "fp16")
        self.best = copy.deepcopy(job.model.state_dict())
        self.best_acc, self.stale, self.history = -1.0, 0, []

    def save(self, path: Path, job: Job, identity: dict) -> None:
        state = {
            "identity": identity,
            "epoch": len(self.history),
            "model": job.model.state_dict(),
            "objective": job.objective.state_dict(),
            "optim": self.optim.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "best_acc": self.best_acc,
            "stale": self.stale,
            "history": self.history,
        }
        with atomic_file(path) as f:
            torch.save(state, f)

    def restore(self, path: Path, job: Job, identity: dict, device: torch.device) -> None:
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # torch raises many types for damaged files
            raise KdxError(
                f"{path}: unreadable checkpoint ({type(e).__name__}); rerun without --resume"
            ) from None
        if not isinstance(saved, dict) or saved.get("identity") != identity:
            raise KdxError(
                f"{path} is a checkpoint of another recipe ({_difference(saved, identity)}); "
                "rerun without --resume to start over"
            )
        job.model.load_state_dict(saved["model"])
        job.objective.load_state_dict(saved["objective"])
        self.optim.load_state_dict(saved["optim"])
        self.sched.load_state_dict(saved["sched"])
        self.scaler.load_state_dict(saved["scaler"])
        self.best, self.best_acc = saved["best"], saved["best_acc"]
        self.stale, self.history = saved["stale"], saved["history"]


def _difference(saved, identity: dict) -> str:
    there = saved.get("identity") if isinstance(saved, dict) else None
    if not isinstance(there, dict):
        return "not a kdexport training checkpoint"
    for key in sorted(set(there) | set(identity)):
        if there.get(key) != identity.get(key):
            return f"{key}: {there.get(key)!r} there, {identity.get(key)!r} here"
    return "different"


def identity_of(**parts) -> dict:
    """A checkpoint identity in canonical (JSON) form, so that it compares equal after loading."""
    return json.loads(json.dumps(parts, sort_keys=True))


def _teacher_outputs(job: Job, x: torch.Tensor, cached: tuple, clock: dict):
    """The teacher's logits and feature for ``x``: the cached ones, else computed now (its time
    added to ``clock["teacher_s"]``, the GPU waited for)."""
    if cached[0] is not None or job.teacher is None:
        return cached
    start = time.perf_counter()
    with torch.no_grad():
        logits = job.teacher(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    clock["teacher_s"] += time.perf_counter() - start
    return logits, job.teacher_tap.value if job.teacher_tap else None


def _step(net, job: Job, state: _State, batch: tuple, opts: dict, cluster: Cluster, clock: dict):
    x, y, *cached = batch
    with autocast(opts["precision"], cluster.device):
        logits = net(x)
        t_logits, t_feature = _teacher_outputs(job, x, cached, clock)
        s_feature = job.student_tap.value if job.student_tap else None
        loss, terms = job.objective(logits, t_logits, y, s_feature, t_feature)
    bad = first_non_finite(loss, terms)
    if bad is None:
        state.optim.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        cluster.average_grads(job.objective.parameters())
        state.scaler.step(state.optim)
        state.scaler.update()
        state.sched.step()
    return bad, terms


def _train_epoch(net, job: Job, state: _State, epoch: int, opts: dict, session: Session):
    """One epoch of ``job.steps`` steps; returns the mean of each loss term and where the time
    went: ``teacher_s`` running the teacher (function matching; 0 with cached outputs),
    ``wait_s`` waiting for the next batch from the data (decoding had not kept up)."""
    cluster, batch, seed = session.cluster, opts["batch_size"], opts["seed"]
    torch.manual_seed(_seed(seed, epoch, cluster.rank, 0))  # dropout
    order = _epoch_order(len(job.pool.y), job.steps, batch, _generator(seed, epoch, 1))
    steps = [
        order[s * batch : (s + 1) * batch][cluster.rank :: cluster.world] for s in range(job.steps)
    ]
    augment = _generator(seed, epoch, cluster.rank, 2)
    streamed = job.pool.placement == "streamed"
    view = job.augment.view if job.augment and streamed else None
    on_batch = job.augment.on_batch(streamed) if job.augment else None
    mix = job.augment.mix if job.augment else None
    net.train()
    sums: dict[str, float] = {}
    clock = {"teacher_s": 0.0, "wait_s": 0.0}
    batches = job.pool.batches(steps, cluster.device, view, _seed(seed, epoch, cluster.rank, 3))
    for step in range(job.steps):
        start = time.perf_counter()
        x, y, *cached = next(batches)
        clock["wait_s"] += time.perf_counter() - start
        if on_batch is not None:  # the teacher then sees the same view (function matching)
            x = on_batch(x, augment)
        if mix is not None:
            x, y = mix(x, y, augment)
        bad, terms = _step(net, job, state, (x, y, *cached), opts, cluster, clock)
        if bad:
            raise KdxError(
                f"{session.label}: the loss is not finite (term '{bad}') at epoch {epoch + 1}, "
                f"step {step + 1} of {job.steps}; lower the learning rate or check the data for NaN"
            )
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v / job.steps
    return sums, clock


@torch.no_grad()
def _validate(model: nn.Module, x: Inputs, y: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean negative log-likelihood on the validation split."""
    logits = torch.from_numpy(predict(model, x))
    labels = torch.from_numpy(y)
    return float((logits.argmax(1) == labels).float().mean()), float(
        F.cross_entropy(logits, labels)
    )


def _to(job: Job, device: torch.device, placement: str) -> None:
    job.model.to(device)
    job.objective.to(device)
    if job.teacher is not None:
        job.teacher.to(device)
    job.pool.place(device, placement)


def _paused(tap):
    """A tap that keeps a whole model's outputs (``TextTap``: every layer's hidden states or
    attentions) rests while validating, whose batches are large; a layer tap keeps running."""
    return tap.paused() if tap is not None else contextlib.nullcontext()


def fit(job: Job, val: tuple[Inputs, np.ndarray], opts: dict, session: Session) -> list:
    """Train ``job.model`` in place; load the best validation epoch's weights; return the history."""
    cluster = session.cluster
    check_precision(opts["precision"], cluster.device)
    if opts["batch_size"] < cluster.world:
        raise KdxError(f"batch_size {opts['batch_size']} < {cluster.world} processes; raise it")
    _to(job, cluster.device, opts["data_placement"])
    state = _State(job, opts)
    if session.resume and session.checkpoint and session.checkpoint.is_file():
        state.restore(session.checkpoint, job, session.identity, cluster.device)
    net = cluster.wrap(job.model)
    for epoch in range(len(state.history), opts["epochs"]):
        if 0 < opts["patience"] <= state.stale:
            break
        start = time.perf_counter()
        terms, clock = _train_epoch(net, job, state, epoch, opts, session)
        train_s = time.perf_counter() - start
        with _paused(job.student_tap):
            val_acc, val_nll = (cluster.from_main(v) for v in _validate(job.model, *val))
        record = {"epoch": epoch + 1, "val_accuracy": val_acc, "val_nll": val_nll, **terms}
        timing = {"train_s": train_s, **{k: round(v, 3) for k, v in clock.items()}}
        state.history.append({**record, **timing, "data": job.pool.placement})
        improved = val_acc > state.best_acc
        state.stale = 0 if improved else state.stale + 1
        if improved:
            state.best, state.best_acc = copy.deepcopy(job.model.state_dict()), val_acc
        if cluster.main and session.checkpoint:
            state.save(session.checkpoint, job, session.identity)
        info = " ".join(f"{k}={v:.3f}" for k, v in terms.items()) + f" val_acc={val_acc:.3f}"
        session.progress(session.label, epoch + 1, opts["epochs"], info)
    job.model.load_state_dict(state.best)
    return state.history


class TrainedModel(TypedDict):
    """What ``save_model`` records in a trained model's checks (the teacher's and the
    student's, which add their own keys: ``teacher.TeacherChecks``, ``distill.StudentChecks``).
    A TypedDict: the checks are JSON in manifest.json, and this describes them at no run-time
    cost. An imported teacher, not trained here, has no ``data_placement``."""

    val_accuracy: float
    test_accuracy: float
    epochs_run: int
    data_placement: NotRequired[str | None]
    # how the model was initialised, where its builder says (``model.init_record``): a head
    # replaced for the data's classes, weights loaded, a student's layers taken from its teacher
    init: NotRequired[dict[str, Any] | None]
    # the share of the training time (all epochs) spent running the teacher (function matching:
    # it runs on every augmented batch) and waiting for the data; None before any epoch
    time_shares: NotRequired[dict[str, float] | None]


def _time_shares(history: list) -> dict[str, float] | None:
    total = sum(e["train_s"] for e in history)
    if not total:
        return None
    return {
        k: round(sum(e.get(f"{k}_s", 0.0) for e in history) / total, 3) for k in ("teacher", "wait")
    }


def save_model(writer, net: nn.Module, splits, history: list) -> None:
    """A trained model into its artifact: weights, history, validation and test accuracy, and
    how it was initialised (``init_record``) where its builder says."""
    torch.save(net.state_dict(), writer.path / "model.pt")
    (writer.path / "history.json").write_text(json.dumps(history, indent=1))
    trained: TrainedModel = {
        "val_accuracy": accuracy(predict(net, splits.x_val), splits.y_val),
        "test_accuracy": accuracy(predict(net, splits.x_test), splits.y_test),
        "epochs_run": len(history),
        "data_placement": history[-1]["data"] if history else None,
        "time_shares": _time_shares(history),
    }
    if getattr(net, "init_record", None):
        trained["init"] = net.init_record
    writer.checks.update(trained)
