"""Compile teacher and student for every target, and check each compiled form.

Every compiled model runs on the held-out sample of ``io_sample.npz`` and is compared with
PyTorch's outputs (tolerance from the target profile) and with the labels (accuracy). A parity
failure fails the stage with the figures; nothing is written for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdexport.artifact import Artifact
from kdexport.backends import backend
from kdexport.distill import Progress, _quiet
from kdexport.errors import KdxError
from kdexport.evaluate import accuracy, parity
from kdexport.export import MODELS
from kdexport.targets import Target, load_target


def open_export(run_dir: Path) -> Artifact:
    return Artifact.open(Path(run_dir) / "export", "export", f"kdexport export {run_dir}")


def open_compiled(run_dir: Path) -> Artifact:
    return Artifact.open(Path(run_dir) / "compile", "compile", f"kdexport compile {run_dir}")


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


def _compile_one(onnx_path: Path, out_dir: Path, name: str, target: Target, sample) -> dict:
    module = backend(target.backend, target.name)
    main = module.compile(onnx_path, out_dir, name, target)
    runner = module.load(main, target)
    outputs = runner.run(sample["x"])
    check = parity(outputs, sample[name], target.tolerance)
    if not check["passed"]:
        raise KdxError(f"{target.name}/{main.name} differs from PyTorch: {check['summary']}")
    files = [p for p in out_dir.iterdir() if p.stem == name]
    return {
        "file": main.name,
        "accuracy": accuracy(outputs, sample["y"]),
        "parity": check,
        "size_bytes": sum(p.stat().st_size for p in files),
        "runtime": runner.info,
    }


def compile(
    run_dir: str | Path,
    progress: Progress = _quiet,
    *,
    targets: list[str] = ["ort-cpu", "openvino-cpu", "ort-cuda"],  # noqa: B006 (read-only)
    skip_unavailable: bool = True,
) -> Artifact:
    """Compile RUN/export's models for each target into RUN/compile/TARGET/ and check them.

    Targets that are not available here are skipped, with the reason recorded, unless
    ``skip_unavailable`` is false.
    """
    exported = open_export(run_dir)
    chosen, skipped = select_targets(targets, skip_unavailable)
    with np.load(exported.file("io_sample.npz")) as f:
        sample = dict(f)
    params = {"targets": targets, "skip_unavailable": skip_unavailable}
    with Artifact.create(Path(run_dir) / "compile", "compile", params, [exported]) as w:
        w.checks["skipped"] = skipped
        w.checks["targets"] = {}
        steps, done = len(chosen) * len(MODELS), 0
        for target in chosen:
            out_dir = w.path / target.name
            out_dir.mkdir()
            result = {"profile": target.as_dict()}
            for name in MODELS:
                result[name] = _compile_one(
                    exported.file(f"{name}.onnx"), out_dir, name, target, sample
                )
                done += 1
                progress("compile", done, steps, f"{target.name}/{name}")
            w.checks["targets"][target.name] = result
    return w.artifact
