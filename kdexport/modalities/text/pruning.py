"""How a Hugging Face encoder is cut for a ``prune:`` student (text's ``Modality.cutter``).

Width (``prune:RATIO``, ``prune:macs=``, the budget search's steps): Torch-Pruning removes whole
attention heads, ranked by the L2 norm of their query, key and value weights, the same share of
the hidden width (the residual stream every layer shares: embeddings, LayerNorms, output
projections, the pooler) and of each layer's intermediate (feed-forward) width. The ratio is
snapped to whole heads (k of n) and the hidden width kept is n - k heads of the same head size,
so the cut is again a model of the family's config: ``hidden_size``, ``num_attention_heads`` and
``intermediate_size`` change, the head size does not.

Depth (``prune:depth=SHARE``): the layers that change their input least leave first. A layer's
block importance is 1 - the mean cosine similarity of its input and output hidden states over
the real tokens of a few examples (Men et al., *ShortGPT*, 2024; Minitron's depth pruning,
Muralidharan et al., 2024, ranks layers alike).

Either cut is rebuilt from its config alone; the fresh model of the new config must have every
tensor of the cut's shape, which is checked when the cut is made (a family whose config cannot
say the cut is refused in one line). BERT-family encoders (BERT, RoBERTa, ELECTRA, ...): self
attention with ``query``, ``key``, ``value`` and ``num_attention_heads``, an
``intermediate.dense`` feed-forward layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdexport.errors import KdxError
from kdexport.modalities.text.classifier import TextClassifier
from kdexport.pruning.cut import Cutter

NOT_BERT = (
    "prune: this transformer's attention is not BERT-style (query, key and value layers with "
    "num_attention_heads); give an hf-student: student instead"
)
DEPTH_CRITERION = (
    "block importance: 1 - mean cosine similarity of a layer's input and output hidden states "
    "over the real tokens of the traced examples"
)


def _attention(model: TextClassifier) -> list[nn.Module]:
    """The self-attention modules of ``model``."""
    return [
        m
        for m in model.hf.modules()
        if all(isinstance(getattr(m, k, None), nn.Linear) for k in ("query", "key", "value"))
        and isinstance(getattr(m, "num_attention_heads", None), int)
        and isinstance(getattr(m, "attention_head_size", None), int)
    ]


def _heads(model: nn.Module) -> int:
    """The number of heads of every attention layer (one number: the config's)."""
    if not isinstance(model, TextClassifier) or not _attention(model):
        raise KdxError(NOT_BERT)
    counts = {m.num_attention_heads for m in _attention(model)}
    if len(counts) != 1:
        raise KdxError(f"prune: the layers have {sorted(counts)} heads; cut a uniform model")
    return counts.pop()


def snap(model: nn.Module, ratio: float) -> float:
    """The share of whole heads nearest ``ratio``: k of n, at least one removed and one kept."""
    n = _heads(model)
    if n < 2:
        raise KdxError("prune: the transformer has one attention head left; no smaller cut")
    return min(max(round(ratio * n), 1), n - 1) / n


def options(model: nn.Module, ratio: float) -> dict:
    """Torch-Pruning's options for a cut of k of n heads (``ratio`` = k/n, as ``snap`` gives):
    whole heads, and the hidden width cut to exactly n - k heads of the same size (its count
    of kept channels is rounded down: the ratio is nudged below k/n so the count is exact)."""
    n = _heads(model)
    k = round(ratio * n)
    heads = {layer: m.num_attention_heads for m in _attention(model)
             for layer in (m.query, m.key, m.value)}  # fmt: skip
    return {
        "num_heads": heads,
        "prune_num_heads": True,
        "prune_head_dims": False,
        "head_pruning_ratio": (k - 0.5) / n,  # rounded up to k heads
        "pruning_ratio": k / n - 1e-9,
    }


def _config_fits(model: TextClassifier) -> None:
    """The model of ``model``'s config has every tensor of ``model``'s shape (a cut is rebuilt
    from its config alone), else one line naming the first that differs."""
    fresh = _from_config(model.hf.config.to_dict()).state_dict()
    for name, tensor in model.hf.state_dict().items():
        if name not in fresh or fresh[name].shape != tensor.shape:
            got = tuple(fresh[name].shape) if name in fresh else "absent"
            raise KdxError(
                f"prune: the cut's {name} {tuple(tensor.shape)} is not what its config builds "
                f"({got}); this transformer family cannot be cut: give an hf-student: student"
            )


def settle(model: nn.Module) -> None:
    """After a width cut: each attention layer's head count and the config follow the shapes."""
    hf = model.hf
    for m in _attention(model):
        m.num_attention_heads = m.query.out_features // m.attention_head_size
        m.all_head_size = m.query.out_features
    hf.config.hidden_size = hf.get_input_embeddings().embedding_dim
    hf.config.num_attention_heads = _heads(model)
    widths = {
        m.out_features for name, m in hf.named_modules() if name.endswith("intermediate.dense")
    }
    if len(widths) != 1:
        raise KdxError(NOT_BERT)
    hf.config.intermediate_size = widths.pop()
    _config_fits(model)


def _layer_list(model: TextClassifier) -> nn.ModuleList:
    """The stack of transformer layers: the module list as long as the config's layer count."""
    count = model.hf.config.num_hidden_layers
    for m in model.hf.modules():
        if isinstance(m, nn.ModuleList) and len(m) == count:
            return m
    raise KdxError(f"prune: no list of {count} layers in this transformer; give an hf-student:")


def block_importance(model: TextClassifier, example: torch.Tensor) -> list[float]:
    """Per layer, 1 - the mean cosine similarity of its input and output hidden states over the
    real (unpadded) tokens of ``example``."""
    model.eval().capture = frozenset({"hidden_states"})
    try:
        with torch.no_grad():
            model(example)
        hidden, mask = model.captured.hidden_states, model.captured.attention_mask.bool()
    finally:
        model.capture, model.captured = frozenset(), None
    cosine = nn.functional.cosine_similarity
    return [
        float(1 - cosine(hidden[i][mask], hidden[i + 1][mask], dim=-1).mean())
        for i in range(len(hidden) - 1)
    ]


def layers(model: nn.Module, example: torch.Tensor, share: float) -> tuple[nn.Module, dict]:
    """A copy of ``model`` without the ``share`` of its layers of least block importance (at
    least one removed, one kept); the record of which and why."""
    if not isinstance(model, TextClassifier):
        raise KdxError(NOT_BERT)
    importance = block_importance(model, example)
    n = len(importance)
    if n < 2:
        raise KdxError("prune:depth= needs a transformer of at least 2 layers; this one has 1")
    removed = sorted(
        sorted(range(n), key=importance.__getitem__)[: min(max(round(share * n), 1), n - 1)]
    )
    net = copy.deepcopy(model).eval()
    stack = _layer_list(net)
    for i in reversed(removed):
        del stack[i]
    net.hf.config.num_hidden_layers = n - len(removed)
    _config_fits(net)
    record = {"criterion": DEPTH_CRITERION, "layers_removed": removed,
              "block_importance": [round(b, 5) for b in importance],
              "removed": f"layers {', '.join(map(str, removed))} of {n}"}  # fmt: skip
    return net, record


def _from_config(saved: dict) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    values = dict(saved)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForSequenceClassification.from_config(config)


def record(model: nn.Module, example: torch.Tensor) -> dict:
    """What rebuilds a cut: its config."""
    return {"config": model.hf.config.to_dict()}


def rebuild(saved: dict, build) -> TextClassifier:
    """The cut of ``saved["config"]`` with fresh weights (``build``, the base's maker, is not
    needed: the config says every shape)."""
    if "config" not in saved:
        raise KdxError("a pruned transformer's structure lacks its config; cut the teacher again")
    return TextClassifier(_from_config(saved["config"]).eval())


CUTTER = Cutter(
    "transformer", "of the attention heads, the hidden and the intermediate width",
    options, snap, settle, record, rebuild, layers,
)  # fmt: skip
