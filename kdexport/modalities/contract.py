"""What a kind of input (a modality) tells the pipeline; one subclass per modality folder.

A run records its modality once (the recipe's ``data.modality``, then the export and bundle
manifests); every stage asks it, through ``kdexport.modalities.get``, instead of looking at an
array's shape, a model's attributes or a spec's prefix. The defaults here fit a model with one
float tensor input whose first axis is the batch (images, speech); a modality overrides what
differs (text: three named int64 token inputs with a sequence axis).

numpy only at import time: a modality's heavy parts (torch, transformers, soundfile) are
imported inside its methods, so a command that reads JSON stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdexport.errors import KdxError
from kdexport.modalities.inputs import Inputs


@dataclass
class Source:
    """What a data source holds: inputs (in memory or streamed, ``kdexport.modalities.inputs``),
    labels (None: unlabeled), class names, how it was read."""

    x: Inputs
    y: np.ndarray | None
    labels: list[str] | None
    preprocessing: dict


@dataclass
class Augmentation:
    """A training augmentation. ``batch(x, generator)`` runs on a batch of model inputs on the
    model's device. ``view`` (None: none) is what a streamed reader draws per item where the
    whole decoded file is at hand (an image's random crop and flip); ``whole`` does the view's
    work and ``batch``'s on a batch of in-memory inputs (default: ``batch``)."""

    batch: Callable | None
    view: Any = None
    whole: Callable | None = None
    mix: Callable | None = None  # (x, labels, generator) -> (x, labels): mixup, cutmix

    def on_batch(self, streamed: bool) -> Callable | None:
        """The batch function of inputs read ``streamed`` (the view drawn) or held in memory."""
        return self.batch if streamed or self.whole is None else self.whole


class Modality:
    """The contract. ``options`` maps a recipe section to a function whose keyword-only
    parameters are this modality's keys in that section (read as the stages' are)."""

    name = ""
    default_student = ""  # the model spec distill.student = "" stands for
    input_name = "input"  # the ONNX input of a one-input model
    options: dict[str, Callable] = {}
    schemes: dict[str, Any] = {}  # model-spec scheme -> kdexport.zoo.Scheme

    def read(self, spec: str, options: dict, labeled: bool, cache_dir: Path) -> Source:
        """One data source (``data.source`` or ``data.transfer``): its inputs (streamed where
        the source is files: a listing, nothing decoded), labels, class names and how it was
        read. ``options``: the [data] section's keys of this modality and ``workers``."""
        raise NotImplementedError

    def complete_recipe(self, recipe: dict) -> None:
        """Fill options that follow from others (text: the tokenizer is the teacher's)."""

    def check_options(self, data: dict) -> None:
        """Refuse options that do not fit the data section's own (one line each)."""

    def named_inputs(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """A batch of this modality's split arrays as the ONNX model's named inputs."""
        if len(names) != 1:
            raise KdxError(
                f"a {self.name} model takes one input; this one takes {', '.join(names)}"
            )
        return {names[0]: np.ascontiguousarray(x)}

    def export(self, model, path: Path, x: np.ndarray, opts: dict, meta: dict) -> dict | None:
        """Export ``model`` in this modality's own way, or None for the one-input export."""
        return None

    def points(self, options: dict) -> list[str]:
        """The measuring points of the benchmark's ``options`` (``"8"``, ``"1x128"``)."""
        return [str(b) for b in options["batch_sizes"]]

    def check_points(self, points: list[str], recorded: dict) -> None:
        """Refuse a measuring point the run's data (as its preprocessing ``recorded`` says)
        cannot give (one line)."""

    def timing_inputs(self, sample: dict[str, np.ndarray]) -> Callable[[str], Any]:
        """Measuring point -> the inputs to time there, made from the held-out sample (the
        student's named inputs): one array for a one-input model (each runner feeds it to its
        own first input, so a teacher whose input has another name takes it too), else named
        inputs."""
        (x,) = sample.values()
        return lambda point: np.ascontiguousarray(x[np.arange(int(point)) % len(x)])

    augmentations: tuple[str, ...] = ()  # the names distill.augment / teacher.augment may give

    def augmentation(self, name: str, options: dict) -> Augmentation | None:
        """The training augmentation ``name``; None for "none". ``options``: the run's [data]
        section."""
        if name == "none":
            return None
        if name not in self.augmentations:
            known = ", ".join(("none", *self.augmentations))
            raise KdxError(f"augment '{name}' is not for {self.name} runs; give one of: {known}")
        return self._augmentation(name, options)

    def _augmentation(self, name: str, options: dict) -> Augmentation:
        raise NotImplementedError

    int8_scheme = "static"  # "static": calibrated QDQ; "transformer": weights only on ORT

    def float_nodes(self, model) -> list[str]:
        """The nodes of an exported model (an ``onnx.ModelProto``) that INT8 keeps in float."""
        return []

    def bundle_preprocessing(self, recorded: dict, input_spec: dict) -> dict:
        """The training data's preprocessing as a bundle's manifest records it."""
        return dict(recorded)

    def bundle_section(self, root: Path, recorded: dict, onnx_facts: dict, run: dict) -> dict:
        """Files this modality's bundle carries (written under ``root``) and the manifest
        section ``run.py`` reads raw input with; {} when it needs none."""
        return {}

    def cutter(self):
        """How a ``prune:`` student cuts this modality's teacher (a
        ``kdexport.pruning.cut.Cutter``), or None: Torch-Pruning's cut of every prunable
        layer's channels (convolutional networks)."""
        return None

    def feature_sizes(self, teacher, student, opts: dict, x, outputs) -> tuple:
        """Pre-flight of a feature loss that reads this modality's taps: the models fit it;
        the loss's sizes (``outputs(model, role, x)`` runs a model as pre-flight does)."""
        name = opts["feature_loss"]
        raise KdxError(
            f"distill.feature_loss '{name}' is not for {self.name} models (it reads what their "
            "modality does not tap); use hint or attention with student_layer and teacher_layer"
        )

    def feature_tap(self, model, kind: str, role: str):
        """A tap on ``model`` for a feature loss that reads ``kind`` (see ``losses``)."""
        raise KdxError(f"a {self.name} model has no '{kind}' to read; choose another feature_loss")
