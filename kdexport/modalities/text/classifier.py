"""A Hugging Face sequence classifier as the pipeline's stages see a model: one tensor in.

``TextClassifier`` takes the packed token array of ``kdexport.modalities.text.tokens`` (N, 3, L), cuts it
back to the batch's longest example (dynamic padding per batch) and returns the logits, so
training, the teacher cache, evaluation and parity run on text as they do on images. Export
takes the wrapped model (``.hf``) with named inputs (``kdexport.modalities.text.export``).

Specs (``kdexport.zoo.create_model`` and the distill stage):

- ``hf:PATH`` / ``hf:ORG/NAME``: a saved classifier (``kdexport.modalities.text.models``); a head of
  another class count is replaced by a new one;
- ``hf-config:PATH``: a fresh model of that config.json (random weights);
- ``hf-student:KEY=VALUE,...``: the teacher's config with these overrides (e.g.
  ``num_hidden_layers=2,hidden_size=128``), started from the teacher's every k-th layer where
  the shapes allow (``kdexport.modalities.text.models.build_student``; the distill stage records the rule).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from kdexport.errors import KdxError
from kdexport.modalities.text.export import input_names
from kdexport.modalities.text.tokens import PACKED
from kdexport.zoo import Parent, Scheme


class Captured(NamedTuple):
    """What a ``TextClassifier`` in capture mode kept from its latest forward pass."""

    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings, then one (B, L, d) per layer
    attentions: tuple[torch.Tensor, ...] | None  # one (B, heads, L, L) per layer
    attention_mask: torch.Tensor  # (B, L) of the trimmed batch


class TextClassifier(nn.Module):
    """``hf`` (a ``*ForSequenceClassification``) on packed token arrays; ``tokenizer`` kept
    with it when known (the student shares the teacher's).

    Capture mode, for the text feature losses: while ``capture`` names ``"hidden_states"``
    and/or ``"attentions"``, each forward pass also asks the model for them and keeps them with
    the trimmed batch's attention mask in ``captured`` (``kdexport.modalities.text.features.TextTap``
    turns it on and reads it). It returns the logits either way."""

    def __init__(self, hf, tokenizer=None):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.inputs = input_names(hf)
        self.capture: frozenset[str] = frozenset()
        self.captured: Captured | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(int(x[:, 1].sum(dim=1).max()), 1) if len(x) else 1
        x = x[:, :, :n]
        feed = {name: x[:, PACKED.index(name)] for name in self.inputs}
        if not self.capture:
            return self.hf(**feed).logits
        hidden, attentions = "hidden_states" in self.capture, "attentions" in self.capture
        out = self.hf(**feed, output_hidden_states=hidden, output_attentions=attentions)
        self.captured = Captured(
            tuple(out.hidden_states) if hidden and out.hidden_states else None,
            tuple(out.attentions) if attentions and out.attentions else None,
            x[:, PACKED.index("attention_mask")],
        )
        return out.logits


def student_overrides(spec: str) -> dict:
    """``hf-student:num_hidden_layers=2,hidden_size=128`` -> {"num_hidden_layers": 2, ...}."""
    body = spec[len("hf-student:") :]
    try:
        table = tomllib.loads("\n".join(item.strip() for item in body.split(",") if item.strip()))
    except tomllib.TOMLDecodeError as e:
        raise KdxError(
            f"student spec '{spec}': give KEY=VALUE pairs separated by commas, e.g. "
            f"hf-student:num_hidden_layers=2,hidden_size=128 ({e})"
        ) from None
    if not table:
        raise KdxError(f"student spec '{spec}': name at least one config key to change")
    return table


def text_model(spec: str, num_classes: int) -> TextClassifier:
    """The classifier ``spec`` names, with a head for ``num_classes`` classes, in eval mode.
    ``hf-student:`` specs need the teacher: the distill stage builds them (``student``)."""
    from kdexport.modalities.text import models

    if spec.startswith("hf-config:"):
        from transformers import AutoModelForSequenceClassification

        config = models.config_file(spec[len("hf-config:") :])
        config.num_labels = num_classes
        return TextClassifier(AutoModelForSequenceClassification.from_config(config).eval())
    if spec.startswith("hf-student:"):
        raise KdxError(f"'{spec}' is a student of the teacher's config: give it as distill.student")
    loaded = models.load_text_model(spec)
    if num_classes and loaded.model.config.num_labels != num_classes:
        loaded = models.load_text_model(spec, [str(i) for i in range(num_classes)])
    return TextClassifier(loaded.model, loaded.tokenizer)


def student(
    parent: Parent, spec: str, seed: int, from_teacher: bool = True
) -> tuple[TextClassifier, dict]:
    """The student of ``spec`` (``hf-config:`` or ``hf-student:``) started from the teacher
    (``parent.model``) where shapes allow (``from_teacher``), else from random weights; with the record of the
    rule applied."""
    from kdexport.modalities.text import models

    teacher = parent.model
    if not isinstance(teacher, TextClassifier):
        raise KdxError(f"distill.student '{spec}' is a text student; the teacher must be hf:")
    wanted = student_overrides(spec) if spec.startswith("hf-student:") else spec
    given = models.TextModel(teacher.hf, teacher.tokenizer, "teacher", None)
    net, record = models.build_student(given, wanted, seed, from_teacher)
    return TextClassifier(net, teacher.tokenizer), record


def _built(spec: str, num_classes: int, in_channels: int) -> TextClassifier:
    return text_model(spec, num_classes)


CONFIG = "config.json"  # a trained text student's config, beside its weights


def _saved(model: TextClassifier, folder: Path) -> str:
    """Write the config a trained student is rebuilt from; the spec that rebuilds it."""
    model.hf.config.to_json_file(folder / CONFIG)
    return f"hf-config:{{artifact}}/{CONFIG}"


# The model-spec schemes of text (kdexport.zoo.Scheme): a saved classifier, a fresh one of a
# config, a student of the teacher's config.
SCHEMES = {
    "hf": Scheme(_built),
    "hf-config": Scheme(_built, student, _saved),
    "hf-student": Scheme(_built, student, _saved),
}
