"""torch -> ONNX for teacher and student, with a dynamic batch axis and a parity check.

The dynamo exporter (``torch.onnx.export(dynamo=True)``, onnxscript) runs first; if it fails the
TorchScript exporter runs, and the manifest records which one did. The exported graph is checked
with ``onnx.checker`` (full check) and run by ONNX Runtime, without graph optimisations, on the
held-out sample against PyTorch's outputs, which are stored in ``io_sample.npz`` for every later
stage to compare with.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from kdexport import __version__
from kdexport.artifact import Artifact, sha256
from kdexport.data import load_splits
from kdexport.distill import Progress, _quiet, load_student, load_teacher, predict
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy, parity
from kdexport.recipe import Range

INPUT, OUTPUT = "input", "logits"
MODELS = ("teacher", "student")


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on one sample, by torch's own flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example[:1])
    return int(counter.get_total_flops())


def _torch_export(model, example, path: Path, opset: int) -> str:
    """Write ``path``; return the exporter that succeeded ("dynamo" or "torchscript")."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The exporter logs and prints its progress (and "torchvision is not installed"): keep quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                path,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT],
                output_names=[OUTPUT],
                external_data=False,
                dynamic_shapes=({0: batch},),
            )
        return "dynamo"
    except Exception as dynamo_error:  # the exporter raises many types; fall back, then report
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    path,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                )
            return "torchscript"
        except Exception as e:
            raise KdxError(
                f"cannot export to ONNX opset {opset}: dynamo: {dynamo_error!s:.200}; torchscript: {e!s:.200}"
            ) from None


def _finish_onnx(path: Path, metadata: dict[str, str]) -> dict:
    """Check the graph, make sure the batch axis is symbolic, stamp metadata; return facts."""
    import onnx

    model = onnx.load(str(path))
    for value in list(model.graph.input) + list(model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise KdxError(f"{path.name}: the exported batch axis of '{value.name}' is fixed")
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return {"opset": model.opset_import[0].version, "ir_version": model.ir_version}


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of the portable ONNX model on ONNX Runtime's CPU provider, no graph rewrites."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT: x})[0]


def export(
    run_dir: str | Path,
    data: dict,
    progress: Progress = _quiet,
    *,
    opset: Annotated[int, Range(17, 23)] = 18,
    example_batch: Annotated[int, Range(2, 4096)] = 4,
    parity_samples: Annotated[int, Range(1)] = 512,
    tolerance: Annotated[float, Range(0.0, lo_open=True)] = 1e-4,
) -> Artifact:
    """Export teacher and student to RUN/export/{teacher,student}.onnx and check them.

    ``example_batch`` > 1 so that the exporter cannot freeze the batch axis at 1.
    """
    splits = load_splits(**data)
    teacher, teacher_art = load_teacher(run_dir, splits)
    student, student_art = load_student(run_dir, splits)
    x = splits.x_test[:parity_samples]
    y = splits.y_test[:parity_samples]
    example = torch.from_numpy(splits.x_train[:example_batch])
    meta = {
        "kdexport_version": __version__,
        "labels": json.dumps(splits.labels),
        "preprocessing": json.dumps(splits.preprocessing),
        "teacher": json.dumps(
            {
                "model": teacher_art.parameters["model"],
                "sha256": sha256(teacher_art.file("model.pt")),
            }
        ),
    }
    params = {
        "opset": opset,
        "example_batch": example_batch,
        "parity_samples": parity_samples,
        "tolerance": tolerance,
        "data": data,
    }
    with Artifact.create(
        Path(run_dir) / "export", "export", params, [teacher_art, student_art]
    ) as w:
        reference = {}
        for i, (name, model) in enumerate((("teacher", teacher), ("student", student))):
            path = w.path / f"{name}.onnx"
            exporter = _torch_export(model, example, path, opset)
            facts = _finish_onnx(path, {**meta, "role": name})
            reference[name] = predict(model, x)
            check = parity(run_onnx(path, x), reference[name], tolerance)
            if not check["passed"]:
                raise KdxError(f"{name}.onnx differs from PyTorch: {check['summary']}")
            w.checks[name] = {
                "exporter": exporter,
                **facts,
                "parity": check,
                "torch_accuracy": accuracy(reference[name], y),
                "params": sum(p.numel() for p in model.parameters()),
                "flops": count_flops(model, example),
            }
            progress("export", i + 1, len(MODELS), f"{name}.onnx via {exporter}")
        np.savez(w.path / "io_sample.npz", x=x, y=y, **reference)
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
