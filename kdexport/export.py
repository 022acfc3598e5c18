"""torch -> ONNX for teacher and student, with a dynamic batch axis and a parity check.

The dynamo exporter (``torch.onnx.export(dynamo=True)``, onnxscript) runs first; if it fails the
TorchScript exporter runs, and the manifest records which one did (``onnxfile.torch_to_onnx``). The exported graph must pass
``onnx.checker`` (full check, with shape inference) and have a symbolic batch axis, and ONNX
Runtime (no graph rewrites) must reproduce PyTorch at batch 1, the export batch and a larger one,
and on the held-out sample, whose PyTorch outputs go into ``io_sample.npz`` for every later stage
to compare with. Training data for INT8 calibration goes into ``calibration.npz``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

import numpy as np
import torch

from kdexport import __version__, modalities
from kdexport.artifact import Artifact
from kdexport.context import Run
from kdexport.distill import load_student
from kdexport.errors import KdxError
from kdexport.evaluate import Parity, accuracy, parity
from kdexport.feeds import save_sample
from kdexport.modalities.contract import Modality
from kdexport.onnx_teacher import TeacherView
from kdexport.onnxfile import (
    OnnxFacts,
    check_batch_sizes,
    check_onnx_file,
    finish_onnx,
    run_reference,
    torch_to_onnx,
)
from kdexport.options import Range, stage_options
from kdexport.rundir import MODELS
from kdexport.teacher import TeacherChecks, load_teacher, teacher_sha256
from kdexport.train.loop import predict
from kdexport.zoo import load_checkpoint

OUTPUT = "logits"
# the export options that ``export_onnx`` takes (the others: which samples, which checkpoint)
EXPORT_OPTIONS = (
    "opset",
    "example_batch",
    "tolerance",
    "static",
    "static_batch",
    "external_data_mb",
)


# What this stage records in RUN/export/manifest.json's checks. The checks are JSON on disk, so
# TypedDicts: they describe exactly what is written, cost nothing at run time, and the stages
# that read them (compile, benchmark, report, plan, package) import them to name what they use.
class StaticVariant(TypedDict):
    """``student-static.onnx`` (``export.static``): its batch and its parity with PyTorch."""

    file: str
    batch: int
    parity: Parity


class ModelFacts(OnnxFacts):
    """One exported model (checks "teacher" and "student"): ``check_onnx_file``'s facts, the
    exporter that ran, its parity with PyTorch on the held-out sample and its size."""

    exporter: str  # "dynamo", "torchscript", or "copied" (an ONNX teacher ships as it is)
    parity: Parity
    torch_accuracy: float
    params: int
    flops: int | None  # None for an ONNX teacher: no torch graph to count on
    batch_check_max_abs_diff: NotRequired[dict[str, float]]  # batch size -> max abs diff
    static: NotRequired[StaticVariant]
    onnx_teacher: NotRequired[TeacherView]  # an ONNX teacher: what its copy answers with
    shape_parity: NotRequired[dict[str, float]]  # text: "BxS" -> max abs diff, padded tokens
    padding_drift: NotRequired[float]  # text: a sample alone vs inside a padded batch


class ExportChecks(TypedDict):
    teacher: ModelFacts
    student: ModelFacts
    # Every run since issue 22 records its modality; readers .get() it for older runs (image).
    modality: str
    preprocessing: dict[str, Any]  # the data's, as the modality recorded it
    versions: dict[str, str]  # torch, onnx, onnxscript


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on one sample, by torch's own flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example[:1])
    return int(counter.get_total_flops())


def _torch_export(
    model, example, path: Path, opset: int, *, input_name: str, dynamic=True, external=False
) -> str:
    """Write ``path`` with one input ``input_name``; return the exporter that succeeded
    ("dynamo" or "torchscript")."""
    batch = {0: "batch"} if dynamic else {}
    axes = {input_name: batch}
    return torch_to_onnx(model, (example,), path, opset, axes, {OUTPUT: batch}, external)


def export_onnx(
    model,
    path: Path,
    example: torch.Tensor,
    x: np.ndarray,
    opts: dict,
    meta: dict,
    modality: Modality | None = None,
) -> dict:
    """Export ``model`` to ``path`` with a dynamic batch axis and check it against PyTorch.

    ``opts``: opset, example_batch, tolerance, external_data_mb, and static/static_batch for a
    fixed-shape variant PATH-static.onnx. Returns the exporter used and the file's facts. A
    modality that exports its own way (text: named token inputs) does so instead.
    """
    modality = modality or modalities.get(modalities.DEFAULT)
    own = modality.export(model, path, x, opts, meta)
    if own is not None:
        return own
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    big = weight_bytes > opts["external_data_mb"] * 2**20
    name = modality.input_name
    exporter = _torch_export(model, example, path, opts["opset"], input_name=name, external=big)
    facts = finish_onnx(path, meta, dynamic=True)
    sizes = sorted({1, opts["example_batch"], 2 * opts["example_batch"] + 1})
    facts["batch_check_max_abs_diff"] = check_batch_sizes(
        path, partial(predict, model), lambda xb: {name: xb}, x, sizes, opts["tolerance"]
    )
    if opts.get("static"):
        static = path.with_name(f"{path.stem}-static.onnx")
        batch = np.ascontiguousarray(x[np.arange(opts["static_batch"]) % len(x)])
        _torch_export(
            model,
            torch.from_numpy(batch),
            static,
            opts["opset"],
            input_name=name,
            dynamic=False,
            external=big,
        )
        finish_onnx(static, {**meta, "role": f"{meta.get('role', '')}-static"}, dynamic=False)
        check = parity(run_reference(static, batch), predict(model, batch), opts["tolerance"])
        if not check["passed"]:
            raise KdxError(f"{static.name} differs from PyTorch: {check['summary']}")
        facts["static"] = {"file": static.name, "batch": opts["static_batch"], "parity": check}
    return {"exporter": exporter, **facts}


def _copy_onnx_teacher(art: Artifact, teacher, dest: Path, meta: dict) -> dict:
    """An ONNX teacher ships as the model it is (no torch graph to export), rewritten to answer
    as the teacher taught: its one output is what ``OnnxModel`` returns (the chosen output, log
    taken of probabilities, flattened inputs; see ``kdexport.onnx_teacher``), with our metadata."""
    import onnx

    model = teacher.view_model()
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **meta})
    onnx.save(model, str(dest))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    checks: TeacherChecks = art.checks
    view = checks.get("onnx_teacher", {})
    return {"exporter": "copied", "params": params, "onnx_teacher": view, **check_onnx_file(dest)}


def export(
    run: Run,
    *,
    opset: Annotated[int, Range(17, 23)] = 18,
    example_batch: Annotated[int, Range(2, 4096)] = 4,
    parity_samples: Annotated[int, Range(1)] = 512,
    tolerance: Annotated[float, Range(0.0, lo_open=True)] = 1e-4,
    calibration_samples: Annotated[int, Range(1)] = 300,
    static: bool = False,
    static_batch: Annotated[int, Range(1, 4096)] = 1,
    student_checkpoint: str = "",
    external_data_mb: Annotated[int, Range(0)] = 1800,
) -> Artifact:
    """Export teacher and student to RUN/export/{teacher,student}.onnx and check them.

    ``example_batch`` > 1 so that the exporter cannot freeze the batch axis at 1. ``static``
    adds ``student-static.onnx`` with the batch fixed at ``static_batch`` for edge runtimes.
    ``student_checkpoint`` exports another state_dict of the student (e.g. an earlier epoch's).
    Models with more than ``external_data_mb`` MiB of weights keep them in external data files.
    """
    options = stage_options(export, locals())
    splits, modality = run.splits(), run.modality
    teacher, teacher_art = load_teacher(run)
    student, student_art = load_student(run)
    if student_checkpoint:
        load_checkpoint(student, student_checkpoint, student_art.parameters["student"])
    x, y = splits.x_test.head(parity_samples), splits.y_test[:parity_samples]
    example = torch.from_numpy(splits.x_train.head(example_batch))
    meta = {
        "kdexport_version": __version__,
        "modality": modality.name,
        "labels": json.dumps(splits.labels),
        "preprocessing": json.dumps(splits.preprocessing),
        "teacher": json.dumps(
            {
                "model": teacher_art.parameters["model"],
                "sha256": teacher_sha256(teacher_art),
            }
        ),
    }
    opts = {k: options[k] for k in EXPORT_OPTIONS}
    params = {**options, "data": run.data}
    with Artifact.create(run.folder("export"), "export", params, [teacher_art, student_art]) as w:
        reference, inputs, names = {}, {}, {}
        for i, (name, model) in enumerate((("teacher", teacher), ("student", student))):
            model_opts = {**opts, "static": static and name == "student"}
            if name == "teacher" and str(teacher_art.parameters["model"]).endswith(".onnx"):
                facts = _copy_onnx_teacher(
                    teacher_art, teacher, w.path / "teacher.onnx", {**meta, "role": name}
                )
            else:
                path, model_meta = w.path / f"{name}.onnx", {**meta, "role": name}
                facts = export_onnx(model, path, example, x, model_opts, model_meta, modality)
            reference[name] = predict(model, x)
            names[name] = [v["name"] for v in facts["inputs"]]
            feed = modality.named_inputs(x, names[name])
            inputs.update(feed)
            check = parity(run_reference(w.path / f"{name}.onnx", feed), reference[name], tolerance)
            if not check["passed"]:
                raise KdxError(f"{name}.onnx differs from PyTorch: {check['summary']}")
            model_facts: ModelFacts = {
                **facts,
                "parity": check,
                "torch_accuracy": accuracy(reference[name], y),
                "params": facts.pop("params", None) or sum(p.numel() for p in model.parameters()),
                "flops": None if facts["exporter"] == "copied" else count_flops(model, example),
            }
            w.checks[name] = model_facts
            run.progress("export", i + 1, len(MODELS), f"{name}.onnx via {facts['exporter']}")
        save_sample(w.path / "io_sample.npz", inputs, y=y, **reference)
        rng = np.random.default_rng(0)
        calib = rng.choice(
            len(splits.x_train), min(calibration_samples, len(splits.x_train)), replace=False
        )
        calibration = {}
        for model_names in names.values():
            calibration.update(
                modality.named_inputs(splits.x_train.take(np.sort(calib)), model_names)
            )
        save_sample(w.path / "calibration.npz", calibration)
        # with "teacher" and "student" above, the keys of ExportChecks
        w.checks["modality"] = modality.name
        w.checks["preprocessing"] = splits.preprocessing
        w.checks["versions"] = _versions()
    return w.artifact


def _versions() -> dict[str, str]:
    import onnx
    import onnxscript

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
    }
