"""The run directory: its stage folders, the two models in it, and the context a stage runs in.

A stage is ``stage(run: Run, **recipe_options) -> Artifact``: ``run`` carries the run directory,
the recipe's ``[data]`` section (loaded once per ``Run``), progress, resume and retrain; the
stage opens its inputs through ``run.open(stage)``, never through its neighbours' folder names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kdexport.artifact import Artifact
from kdexport.progress import Progress, quiet

if TYPE_CHECKING:  # data imports numpy only, but a JSON-reading command needs none of it
    from kdexport.data import Splits

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


def student_bundle(export: Artifact) -> str:
    """The name of a run's bundles: ``student-`` and the first 12 digits of the exported
    student's sha256, as the export manifest records it (verified when the artifact opened).
    Plans and device results name the run they belong to by it."""
    return f"student-{export.manifest['files']['student.onnx']['sha256'][:12]}"


def open_stage(run_dir: str | Path, stage: str) -> Artifact:
    """The complete, current artifact of ``stage`` in ``run_dir``, or a KdxError with the command
    that makes it."""
    kind, command = STAGES[stage]
    return Artifact.open(Path(run_dir) / stage, kind, f"{command} {run_dir}")


@dataclass
class Run:
    """What a stage runs in: the run directory and the recipe's [data] section, with progress,
    resume (continue an interrupted training) and retrain (ignore a cached teacher)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    progress: Progress = quiet
    resume: bool = False
    retrain: bool = False
    _splits: Splits | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def splits(self) -> Splits:
        """The data's fixed split, loaded once for every stage that runs in this context."""
        if self._splits is None:
            from kdexport.data import load_splits

            # Tokenised text is cached with the run unless the recipe names a folder.
            cache = self.data.get("cache_dir") or str(self.path / "cache")
            self._splits = load_splits(**{**self.data, "cache_dir": cache})
        return self._splits

    def open(self, stage: str) -> Artifact:
        return open_stage(self.path, stage)

    def folder(self, stage: str) -> Path:
        return self.path / stage
