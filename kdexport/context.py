"""The context a stage runs in.

A stage is ``stage(run: Run, **recipe_options) -> Artifact``: ``run`` carries the run directory,
the recipe's ``[data]`` section (its split loaded once per ``Run``), its modality, progress,
resume and retrain; the stage opens its inputs through ``run.open(stage)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdexport import modalities
from kdexport.artifact import Artifact
from kdexport.data import Splits, load_splits
from kdexport.modalities.contract import Modality
from kdexport.progress import Progress, quiet
from kdexport.rundir import open_stage


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
            # What a modality caches (token ids) stays with the run unless the recipe says.
            cache = self.data.get("cache_dir") or str(self.path / "cache")
            self._splits = load_splits(**{**self.data, "cache_dir": cache})
        return self._splits

    @property
    def modality(self) -> Modality:
        """The run's modality: the recipe's ``data.modality`` (a run made before modalities
        were recorded is an image run)."""
        return modalities.get(self.data.get("modality", modalities.DEFAULT))

    def open(self, stage: str) -> Artifact:
        return open_stage(self.path, stage)

    def folder(self, stage: str) -> Path:
        return self.path / stage
