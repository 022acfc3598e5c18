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
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from kdexport.errors import KdxError

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
