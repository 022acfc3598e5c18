"""The ``distill`` stage: the run's teacher taught to the student (CE + KD, feature terms).

``trainer.fit`` runs the loop. The student learns from its labeled share of the training split
(``label_fraction``) and from the teacher's outputs on every training input plus the unlabeled
transfer set; with no random augmentation those outputs come from ``teacher_cache``. Under
``torchrun`` it trains with DistributedDataParallel (see ``parallel``). A killed stage
continues with ``resume`` from ``RUN/checkpoints/student.pt``.

A feature loss reads what its class declares (``losses``): one named layer of each model
(``LayerTap``), or what the run's modality taps (text: every layer's hidden states or
attentions); a loss that cannot be served from the cache runs the teacher on every batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NotRequired

import numpy as np
import torch
from torch import nn

from kdexport.artifact import Artifact
from kdexport.context import Run
from kdexport.data import Splits, labeled_subset, what_is_read
from kdexport.errors import KdxError
from kdexport.losses import (
    FEATURE_LOSSES,
    LOGIT_LOSSES,
    LOSSES,
    UNLABELED,
    WEIGHTINGS,
    Objective,
    term_weights,
)
from kdexport.modalities.inputs import concat
from kdexport.options import OneOf, Range, stage_options
from kdexport.progress import quiet
from kdexport.rundir import Loaded
from kdexport.teacher import load_teacher, teacher_identity
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
    save_model,
)
from kdexport.train.parallel import Cluster, cluster, publish
from kdexport.train.preflight import check_models, check_weighting
from kdexport.train.qat import fake_quantized
from kdexport.train.teacher_cache import cache_key, teacher_outputs
from kdexport.zoo import Parent, create_model, load_checkpoint, scheme_of


class StudentChecks(TrainedModel):
    """RUN/student's checks (JSON in its manifest, so a TypedDict: it describes what is on disk
    at no run-time cost): ``save_model``'s figures and, for a student whose scheme rebuilds it
    from its own files (text's ``hf-student:``), the spec to rebuild it."""

    model_spec: NotRequired[str]


def load_student(run: Run) -> Loaded:
    """The distilled student of a run directory, in eval mode."""
    art, splits = run.open("student"), run.splits()
    checks: StudentChecks = art.checks
    # A student built from its teacher is rebuilt from the files its scheme saved.
    spec = checks.get("model_spec", art.parameters["student"]).format(artifact=art.path)
    model = create_model(spec, splits.num_classes, splits.input_shape[0])
    return Loaded(load_checkpoint(model, art.file("model.pt"), art.parameters["student"]), art)


def parent(model: nn.Module, spec: str, splits: Splits, searched: Path | None = None) -> Parent:
    """The teacher as a student's builder sees it: with its spec, a few inputs to trace it (and
    rank a transformer's layers), the folder of the run's cut search (``searched``) and the
    run's modality."""
    x = splits.x_val if len(splits.x_val) else splits.x_train
    return Parent(model, spec, torch.from_numpy(x.head(16)), searched, splits.modality)


def build_student(
    opts: dict, splits: Splits, teacher: Parent | None = None, scratch: bool = False
) -> nn.Module:
    """The student of the [distill] options, before training: seeded, from its checkpoint if any.
    A student whose scheme builds it from the teacher (text's ``hf-student:``, ``hf-config:``,
    a ``prune:`` cut) starts from the teacher where shapes allow, unless it is the ``scratch``
    baseline; the rule applied is in ``net.init_record``."""
    torch.manual_seed(opts["seed"])  # seeds the initial weights
    scheme = scheme_of(opts["student"])
    if scheme is not None and scheme.student is not None and teacher is not None:
        net, record = scheme.student(teacher, opts["student"], opts["seed"], not scratch)
        net.init_record = record
    else:
        net = create_model(opts["student"], splits.num_classes, splits.input_shape[0])
    if opts["checkpoint"]:
        load_checkpoint(net, opts["checkpoint"], opts["student"])
    if not any(p.requires_grad for p in net.parameters()):
        raise KdxError(f"distill.student '{opts['student']}' has no trainable parameters")
    return net


def student_pool(splits: Splits, opts: dict, data_seed: int, scratch: bool) -> Pool:
    """KD: every training input and the transfer set, labels kept on the labeled share only.
    Scratch: the labeled share alone."""
    keep = labeled_subset(splits.y_train, opts["label_fraction"], data_seed)
    if scratch:
        x, y = splits.x_train.subset(keep), splits.y_train[keep]
    else:
        x = concat(
            splits.x_train,
            splits.x_transfer,
            f"data.transfer '{splits.preprocessing.get('transfer')}'",
        )
        y = np.full(len(x), UNLABELED, np.int64)
        y[: len(keep)][keep] = splits.y_train[keep]
    return Pool(x, torch.from_numpy(y))


def train_student(
    run: Run,
    teacher: Loaded,
    opts: dict,
    session: Session,
    scratch: bool = False,
    net: nn.Module | None = None,
) -> tuple[nn.Module, list]:
    """Train the student of ``opts`` (or ``net``, a student already built) with KD from
    ``teacher`` (or from scratch, CE only, on the labeled share with the same number of steps);
    returns it with its history."""
    splits = run.splits()
    model, art = teacher
    if net is None:
        cut_from = parent(model, art.parameters["model"], splits, run.folder("prune"))
        net = build_student(opts, splits, cut_from, scratch)
    shapes = check_models(model, net, splits, opts)
    steps = math.ceil((len(splits.x_train) + len(splits.x_transfer)) / opts["batch_size"])
    pool = student_pool(splits, opts, run.data.get("seed", 0), scratch)
    augmentation = run.modality.augmentation(opts["augment"], run.data)
    if scratch:
        return net, fit(
            Job(net, Objective({"ce": 1.0}), pool, steps, augment=augmentation),
            (splits.x_val, splits.y_val),
            opts,
            session,
        )
    keys = ("kd_loss", "weighting", "kd_weight", "feature_loss", "feature_weight")
    objective = Objective(term_weights(*(opts[k] for k in keys)), opts["temperature"], shapes)
    device = session.cluster.device
    s_tap, t_tap = _taps(net, model, opts, run.modality) if shapes else (None, None)
    try:
        job = Job(net, objective, pool, steps, model.to(device), t_tap, s_tap, augmentation)
        if opts["augment"] == "none" and _cacheable(opts):  # else per batch: see _taps
            _cache_teacher_outputs(job, art, run.folder("cache"), splits, device)
        with fake_quantized(net) if opts["quant_aware"] else contextlib.nullcontext():
            history = fit(job, (splits.x_val, splits.y_val), opts, session)
        return net, history
    finally:
        for tap in (s_tap, t_tap):
            if tap:
                tap.close()


def _cacheable(opts: dict) -> bool:
    """Whether the teacher's outputs for the feature loss (if any) can be cached: not for a
    loss that reads every layer of a model (its ``cache_teacher``), whose outputs over every
    training example would take far too much memory and disk; the teacher then runs on each
    batch, beside the student."""
    loss = LOSSES.get(opts["feature_loss"])
    return loss is None or loss.cache_teacher


def _taps(net: nn.Module, teacher: nn.Module, opts: dict, modality) -> tuple:
    """The student's and the teacher's taps for the feature loss, as the loss builds them:
    one named layer each, or what the run's modality taps (``losses``)."""
    return LOSSES[opts["feature_loss"]].taps(net, teacher, opts, modality)


def _cache_teacher_outputs(job: Job, art: Artifact, cache_dir, splits: Splits, device):
    """Fill the pool with the teacher's outputs over it (inputs that do not change)."""
    x = job.pool.x
    layer = job.teacher_tap.name if job.teacher_tap else ""
    key = cache_key(teacher_identity(art), x.identity(), splits.preprocessing, layer)
    logits, feature = teacher_outputs(job.teacher, x, key, cache_dir, job.teacher_tap, device)
    job.pool.teacher_logits = torch.from_numpy(logits)
    job.pool.teacher_feature = None if feature is None else torch.from_numpy(feature)


def student_params(opts: dict, data: dict, splits: Splits) -> dict:
    """What a student artifact (and a baseline of it) records as its parameters."""
    return {**opts, "data": what_is_read(data), "data_fingerprint": splits.fingerprint()}


def distill(
    run: Run,
    *,
    student: str = "",
    checkpoint: str = "",
    epochs: Epochs = 40,
    lr: LearningRate = 1e-2,
    batch_size: BatchSize = 64,
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
    """Distill the run's teacher into ``student`` (""; the modality's default student);
    writes RUN/student (its weights alone).

    ``checkpoint``: a state_dict to start the student from (default: fresh weights).
    ``weighting="alpha"``: L = (1-w)·CE + w·KD (w = ``kd_weight`` must be <= 1);
    ``weighting="lambda"``: L = CE + w·KD; a feature loss adds ``feature_weight``·F.
    ``feature_loss``: ``hint``/``attention`` read ``student_layer`` and ``teacher_layer`` (image
    models); ``tinybert_hidden``/``minilm_attention`` read every layer of two transformers (text
    models; leave the layers empty), sized from their configs; the teacher then runs per batch.
    ``label_fraction``: the share of training labels the student sees (stratified, fixed by
    data.seed); the other training inputs teach through the teacher's outputs alone.
    ``quant_aware``: the student trains under simulated INT8 (``kdexport.train.qat``), so that the
    INT8 targets lose less accuracy when they quantize it.
    """
    student = student or run.modality.default_student
    opts = stage_options(distill, locals())
    check_weighting(weighting, kd_weight)
    splits = run.splits()
    teacher = load_teacher(run)
    params = student_params(opts, run.data, splits)
    teacher_art = teacher.artifact
    with cluster(device) as c:
        session = Session(
            "distill",
            run.progress if c.main else quiet,
            c,
            checkpoint=run.folder("checkpoints") / "student.pt",
            resume=run.resume,
            identity=identity_of(stage="distill", teacher=teacher_identity(teacher_art), **params),
        )
        net, history = train_student(run, teacher, opts, session)

        def fill(writer) -> None:
            save_model(writer, net.cpu(), splits, history)
            scheme = scheme_of(opts["student"])
            if scheme is not None and scheme.save is not None:  # rebuilt from its own files
                writer.checks["model_spec"] = scheme.save(net, writer.path)

        return publish(c, run.folder("student"), "student", params, [teacher_art], fill)


@dataclass
class Study:
    """Several students trained against the run's teacher under one cluster (a search, or KD
    against scratch), recorded together as one artifact of ``kind``."""

    run: Run
    kind: str
    teacher: Loaded
    cluster: Cluster
    params: dict

    def train(self, label: str, opts: dict, scratch: bool = False) -> tuple[nn.Module, list]:
        progress = self.run.progress if self.cluster.main else quiet
        session = Session(label, progress, self.cluster)
        return train_student(self.run, self.teacher, opts, session, scratch)

    def publish(self, checks: dict) -> Artifact:
        folder = self.run.folder(self.kind)
        parents = [self.teacher.artifact]
        return publish(
            self.cluster, folder, self.kind, self.params, parents, lambda w: w.checks.update(checks)
        )


@contextlib.contextmanager
def study(run: Run, kind: str, distill_options: dict, seeds: int) -> Iterator[Study]:
    """A ``Study`` of students with ``distill_options`` over ``seeds`` seeds each."""
    if seeds < 1:
        raise KdxError(f"--seeds {seeds}: give at least 1")
    teacher = load_teacher(run)
    params = {**student_params(distill_options, run.data, run.splits()), "seeds": seeds}
    with cluster(distill_options["device"]) as c:
        yield Study(run, kind, teacher, c, params)
