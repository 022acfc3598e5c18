"""What the text losses read from a Hugging Face sequence classifier: its logits, hidden states
and attention distributions, from one forward pass.

A training step of a text distillation loop calls it once per model and hands the parts to the
losses (``kdexport.losses``)::

    s = text_features(student, batch)                       # with gradients
    with torch.no_grad():
        t = text_features(teacher, batch)
    mask = batch["attention_mask"]
    loss = (kd(s.logits, t.logits, labels)
            + hidden(s.hidden_states, t.hidden_states, labels, attention_mask=mask)
            + attn(s.attentions, t.attentions, labels, attention_mask=mask))

``hidden = TinyBERTHiddenLoss(d_s, d_t, M, N)`` is trained with the student (put its parameters
in the optimizer) and saved apart from it; ``attn = MiniLMAttentionLoss(heads_s, heads_t)``.
Attention distributions need the eager attention implementation (``sdpa`` never materialises
them): load the models with ``attn_implementation="eager"`` or call ``use_eager_attention``.

The distill stage reads the same parts through ``TextTap`` (``distill.feature_loss =
"tinybert_hidden"`` or ``"minilm_attention"``): a ``TextClassifier`` in capture mode keeps them
from each forward pass, and the objective gets them with the batch's attention mask.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from kdexport.errors import KdxError
from kdexport.losses import LOSSES

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class TextFeatures(NamedTuple):
    logits: torch.Tensor  # (B, classes)
    hidden_states: tuple[torch.Tensor, ...]  # embeddings, then one (B, L, d) per layer
    attentions: tuple[torch.Tensor, ...] | None  # one (B, heads, L, L) per layer


def use_eager_attention(model) -> None:
    """Switch ``model`` to the eager attention implementation, which returns the attention
    distributions (the same values as ``sdpa``, within float error)."""
    model.set_attn_implementation("eager")


def text_features(model, batch: dict, attentions: bool = True) -> TextFeatures:
    """Run ``model`` (a ``*ForSequenceClassification``) on ``batch`` (input_ids,
    attention_mask and, if the model takes them, token_type_ids: tensors of (B, L)) and
    return its logits, hidden states and (with ``attentions``) attention distributions."""
    feed = {k: batch[k] for k in INPUT_NAMES if k in batch}
    out = model(**feed, output_hidden_states=True, output_attentions=attentions)
    if attentions and not out.attentions:
        raise KdxError(
            "the model returned no attention distributions (its attention implementation "
            "is not eager); load it with attn_implementation='eager' or call use_eager_attention"
        )
    return TextFeatures(
        out.logits, tuple(out.hidden_states), out.attentions and tuple(out.attentions)
    )


class TappedText(NamedTuple):
    """A ``TextTap``'s value: what a text loss compares, and the batch's (B, L) mask."""

    states: tuple[torch.Tensor, ...]  # hidden states or attentions, one tensor per layer
    attention_mask: torch.Tensor


class TextTap:
    """``LayerTap``'s interface for a ``kdexport.modalities.text.classifier.TextClassifier``: while open,
    the model keeps its ``kind`` (``"hidden_states"`` or ``"attentions"``) from every forward
    pass, and ``value`` is the latest as ``TappedText`` (None before the first pass).

    For attentions the model is switched to eager attention (``use_eager_attention``; the same
    values as ``sdpa``, more memory and time; it stays so after ``close``, and the saved config
    does not record it), and the dropout on its attention probabilities is off until ``close``:
    the models return the distributions after that dropout, and a dropped key (probability 0)
    would make KL(teacher || student) meaningless (its log is -inf). Dropout elsewhere stays."""

    def __init__(self, model, kind: str, role: str):
        if not hasattr(model, "capture") or not hasattr(model, "hf"):
            raise KdxError(
                f"a text feature loss reads the {role}'s {kind}: the {role} must be a Hugging "
                f"Face text classifier (hf:, hf-student:, hf-config:), not {type(model).__name__}"
            )
        if kind not in ("hidden_states", "attentions"):
            raise KdxError(f"a text tap reads hidden_states or attentions, not '{kind}'")
        self._dropouts: list[tuple[nn.Dropout, float]] = []
        if kind == "attentions":
            use_eager_attention(model.hf)
            self._dropouts = [(d, d.p) for d in attention_dropouts(model.hf)]
            for d, _ in self._dropouts:
                d.p = 0.0
        self.model, self.kind, self.role, self.name = model, kind, role, kind
        model.capture = model.capture | {kind}
        model.captured = None

    @property
    def value(self) -> TappedText | None:
        captured = self.model.captured
        if captured is None:
            return None
        states = getattr(captured, self.kind)
        if not states:
            raise KdxError(
                f"the {self.role} returned no {self.kind.replace('_', ' ')} (for attentions its "
                "attention implementation must be eager; see use_eager_attention)"
            )
        return TappedText(states, captured.attention_mask)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No capture inside (validation: its large batches' every layer is not needed)."""
        self.model.capture = self.model.capture - {self.kind}
        self.model.captured = None
        try:
            yield
        finally:
            self.model.capture = self.model.capture | {self.kind}
            self.model.captured = None

    def close(self) -> None:
        """End the capture (a teacher is tapped again by every training run that uses it)."""
        self.model.capture = self.model.capture - {self.kind}
        self.model.captured = None
        for d, p in self._dropouts:
            d.p = p
        self._dropouts = []


def attention_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The dropout layers applied to attention probabilities: those held directly by a
    self-attention module (a class named ``*Attention``: ``BertSelfAttention``, DistilBERT's
    ``MultiHeadSelfAttention``), which reads their ``p`` on every forward pass."""
    return [
        child
        for module in model.modules()
        if type(module).__name__.endswith("Attention")
        for child in module.children()
        if isinstance(child, nn.Dropout)
    ]


def loss_sizes(teacher, student, opts: dict, x: torch.Tensor, outputs) -> tuple:
    """Pre-flight for a text feature loss: both models are transformers whose configs fit the
    loss (its sizes, from the configs), and one captured pass of each gives a finite loss.
    ``outputs(model, role, x)`` runs a model as pre-flight does."""
    name = opts["feature_loss"]
    cls = LOSSES[name]
    for role in ("student", "teacher"):
        if opts[f"{role}_layer"]:
            raise KdxError(
                f"distill.{role}_layer = '{opts[f'{role}_layer']}': leave it empty with "
                f"feature_loss '{name}', which reads every layer's {cls.inputs}"
            )
    for m, role in ((student, "student"), (teacher, "teacher")):
        if not hasattr(m, "hf"):
            spec = "hf:" if role == "teacher" else "hf-student: or hf-config:"
            raise KdxError(
                f"distill.feature_loss '{name}' is for text models; the {role} is not one "
                f"(give a {spec} {role}, or use hint / attention for image models)"
            )
    sizes = cls.sizes(student.hf.config, teacher.hf.config)
    if problem := cls.mismatch(*sizes):
        raise KdxError(f"distill.feature_loss '{name}': {problem}")
    taps = [TextTap(student, cls.inputs, "student"), TextTap(teacher, cls.inputs, "teacher")]
    try:
        outputs(student, "student", x)
        outputs(teacher, "teacher", x)
        s, t = (tap.value for tap in taps)
        loss = cls(*sizes).to(s.attention_mask.device)
        with torch.no_grad():
            value = float(loss(s.states, t.states, None, s.attention_mask))
    except KdxError as e:
        raise KdxError(f"distill.feature_loss '{name}': {e}") from None
    except Exception as e:  # the configs say one thing, the outputs another
        raise KdxError(
            f"distill.feature_loss '{name}' cannot compare the models' {cls.inputs} "
            f"({type(e).__name__}: {e})"
        ) from None
    finally:
        for tap in taps:
            tap.close()
    if not math.isfinite(value):
        raise KdxError(f"distill.feature_loss '{name}' is {value} on the first samples")
    return sizes
