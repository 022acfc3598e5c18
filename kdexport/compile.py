"""Compile teacher and student for every target, and check each compiled form.

Every compiled model runs on the held-out sample of ``io_sample.npz`` and is compared with
PyTorch's outputs and with the labels (accuracy). fp32/fp16 forms must meet their precision's
parity bounds (see ``profiles.PARITY``), or the stage fails with the figures and writes nothing.
INT8 forms must meet their parity bound and the quantization gate (accuracy drop, speed); one
that fails is not shipped: its files are removed and the manifest says why.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from kdexport import modalities
from kdexport.artifact import Artifact
from kdexport.backends import backend
from kdexport.backends.profiles import Target, load_target
from kdexport.context import Run
from kdexport.errors import KdxError
from kdexport.evaluate import Parity, accuracy, parity
from kdexport.feeds import for_model, load_sample
from kdexport.rundir import MODELS

if TYPE_CHECKING:  # export.py imports torch; this stage reads only its manifest
    from kdexport.export import ExportChecks


# What this stage records in RUN/compile/manifest.json's checks: JSON on disk, so TypedDicts,
# which describe it exactly at no run-time cost; benchmark, report, plan and package read them.
class CompiledModel(TypedDict):
    """One model compiled for one target, checked on the held-out sample."""

    file: str
    accuracy: float
    parity: Parity
    size_bytes: int
    runtime: dict[str, Any]  # the runner's ``info``: providers or devices, nodes by provider
    shipped: bool
    cpu_fallback_nodes: NotRequired[int]  # nodes a GPU provider left on the CPU
    # An INT8 form: the quantization gate's decision (``backends.quantize.gate``)
    reason: NotRequired[str]
    accuracy_drop_points: NotRequired[float]
    latency_ratio: NotRequired[float]
    latency_ratio_iqr: NotRequired[list[float]]
    fp32_accuracy: NotRequired[float]
    int8_p50_ms: NotRequired[float]
    fp32_p50_ms: NotRequired[float]


class TargetResult(TypedDict):
    profile: dict[str, Any]  # ``Target.as_dict()``: ``Target.from_dict`` reads it back
    teacher: CompiledModel
    student: CompiledModel


class CompileChecks(TypedDict):
    skipped: dict[str, str]  # target -> why it is not available here
    targets: dict[str, TargetResult]


def shipped_targets(checks: CompileChecks) -> list[str]:
    """The compiled targets with a model that ships (an INT8 one that failed its gate does not)."""
    return [n for n, t in checks["targets"].items() if any(t[m]["shipped"] for m in MODELS)]


def select_targets(names: list[str], skip_unavailable: bool) -> tuple[list[Target], dict[str, str]]:
    """Resolve target names; unavailable ones are skipped with their reason, or an error."""
    chosen, skipped = [], {}
    for target in (load_target(n) for n in names):
        reason = target.unavailable_reason()
        if reason is None:
            chosen.append(target)
        elif skip_unavailable:
            skipped[target.name] = reason
        else:
            raise KdxError(f"target '{target.name}' is not available here: {reason}")
    if not chosen:
        raise KdxError(f"none of the targets {', '.join(names)} is available here: {skipped}")
    return chosen, skipped


def with_int8_settings(target: Target, modality, onnx_path: Path) -> Target:
    """``target`` with what the run's modality asks of INT8 in its quantization options: the
    scheme, "static" (calibrated QDQ) or "transformer" (``backends.quantize``), and the nodes
    kept in float (``Modality.float_nodes``: speech's log-mel front end)."""
    if target.precision != "int8":
        return target
    import onnx

    kept = modality.float_nodes(onnx.load(str(onnx_path), load_external_data=False))
    quantization = {**target.quantization, "scheme": modality.int8_scheme, "float_nodes": kept}
    return dataclasses.replace(target, quantization=quantization)


def _build(onnx_path: Path, out_dir: Path, name: str, target: Target, sample, calibration):
    """Compile one model for one target and run it on the sample; (runner, result)."""
    module = backend(target.backend, target.name)
    main = module.compile(onnx_path, out_dir, name, target, calibration)
    runner = module.load(main, target)
    outputs = runner.run(sample["x"])
    check = parity(
        outputs, sample[name], target.atol, rtol=target.rtol, min_agreement=target.min_agreement
    )
    files = [p for p in out_dir.iterdir() if p.stem == name]
    result = {
        "file": main.name,
        "accuracy": accuracy(outputs, sample["y"]),
        "parity": check,
        "size_bytes": sum(p.stat().st_size for p in files),
        "runtime": runner.info,
    }
    return runner, result


def _int8_gate(onnx_path: Path, name: str, target: Target, sample, int8_runner, result) -> dict:
    """Compare the INT8 model with the fp32 model on the same backend; remove it if it fails."""
    from kdexport.backends.quantize import gate

    fp32 = dataclasses.replace(
        target, name=f"{target.name}-fp32", precision="fp32", atol=1e-4, rtol=0.0, min_agreement=1.0
    )
    with tempfile.TemporaryDirectory() as tmp:
        fp32_runner, fp32_result = _build(onnx_path, Path(tmp), name, fp32, sample, None)
        return gate(
            int8_runner,
            fp32_runner,
            sample["x"],
            (result["accuracy"], fp32_result["accuracy"]),
            target.quantization,
        )


def compile_model(
    onnx_path: Path, out_dir: Path, name: str, target: Target, sample: dict, calibration
) -> CompiledModel:
    """Compile one ONNX model for one target into ``out_dir`` and check it.

    ``sample`` holds ``x``, ``y`` and ``sample[name]``, the PyTorch outputs for ``x``.
    """
    runner, result = _build(onnx_path, out_dir, name, target, sample, calibration)
    on_cpu = result["runtime"].get("nodes_by_provider", {}).get("CPUExecutionProvider", 0)
    if target.options.get("provider", "CPUExecutionProvider") != "CPUExecutionProvider" and on_cpu:
        result["cpu_fallback_nodes"] = on_cpu  # flagged in the report, never silent
    if target.precision != "int8":
        if not result["parity"]["passed"]:
            raise KdxError(
                f"{target.name}/{result['file']} differs from PyTorch: {result['parity']['summary']}"
            )
        compiled: CompiledModel = {**result, "shipped": True}
        return compiled
    decision = _int8_gate(onnx_path, name, target, sample, runner, result)
    if not result["parity"]["passed"]:
        decision["shipped"] = False
        decision["reason"] = (
            f"differs from PyTorch beyond the INT8 bound ({result['parity']['summary']})"
        )
    del runner  # release the files before they may be removed
    if not decision["shipped"]:
        for p in out_dir.iterdir():
            if p.name.split(".")[0] == name:
                p.unlink()
    gated: CompiledModel = {**result, **decision}
    return gated


def compile_targets(
    run: Run,
    *,
    targets: list[str] = ["ort-cpu", "openvino-cpu", "ort-cuda"],  # noqa: B006 (read-only)
    skip_unavailable: bool = True,
) -> Artifact:
    """Compile RUN/export's models for each target into RUN/compile/TARGET/ and check them.

    Targets that are not available here are skipped, with the reason recorded, unless
    ``skip_unavailable`` is false.
    """
    exported = run.open("export")
    exp: ExportChecks = exported.checks
    chosen, skipped = select_targets(targets, skip_unavailable)
    inputs, sample = load_sample(exported.file("io_sample.npz"))
    calibration, _ = load_sample(exported.file("calibration.npz"))
    modality = modalities.get(exp.get("modality", modalities.DEFAULT))
    params = {"targets": targets, "skip_unavailable": skip_unavailable}
    with Artifact.create(run.folder("compile"), "compile", params, [exported]) as w:
        checks: CompileChecks = {"skipped": skipped, "targets": {}}
        w.checks.update(checks)
        steps, done = len(chosen) * len(MODELS), 0
        for target in chosen:
            out_dir = w.path / target.name
            out_dir.mkdir()
            result: TargetResult = {"profile": target.as_dict()}  # and each of MODELS
            for name in MODELS:
                onnx_path = exported.file(f"{name}.onnx")
                quantized = with_int8_settings(target, modality, onnx_path)
                names = [i["name"] for i in exp[name]["inputs"]]
                model_sample = {**sample, "x": for_model(inputs, names)}
                model_calibration = for_model(calibration, names)
                result[name] = compile_model(
                    onnx_path, out_dir, name, quantized, model_sample, model_calibration
                )
                done += 1
                run.progress("compile", done, steps, f"{target.name}/{name}")
            checks["targets"][target.name] = result
    return w.artifact
