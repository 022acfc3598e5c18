"""The run directory: its stage folders and the two models in it.

A stage opens its inputs through ``open_stage`` (``kdexport.context.Run.open``), never through
its neighbours' folder names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from kdexport.artifact import Artifact

MODELS = ("teacher", "student")


class Loaded(NamedTuple):
    """A model of the run, loaded (an ``nn.Module`` in eval mode), with the artifact it came from."""

    model: Any
    artifact: Artifact


STAGES = {  # folder -> (artifact kind, the command that makes it)
    "teacher": ("teacher", "kdexport train-teacher"),
    "student": ("student", "kdexport distill"),
    "export": ("export", "kdexport export"),
    "compile": ("compile", "kdexport compile"),
    "benchmark": ("benchmark", "kdexport benchmark"),
}
AFTER_RUN = {  # ... and those a command adds to a complete run
    "serve": ("serve", "kdexport serve-bench"),
}


def student_bundle(export: Artifact) -> str:
    """The name of a run's bundles: ``student-`` and the first 12 digits of the exported
    student's sha256, as the export manifest records it (verified when the artifact opened).
    Plans and device results name the run they belong to by it."""
    return f"student-{export.manifest['files']['student.onnx']['sha256'][:12]}"


def open_stage(run_dir: str | Path, stage: str) -> Artifact:
    """The complete, current artifact of ``stage`` in ``run_dir``, or a KdxError with the command
    that makes it."""
    kind, command = {**STAGES, **AFTER_RUN}[stage]
    return Artifact.open(Path(run_dir) / stage, kind, f"{command} {run_dir}")
