"""Structured cuts of a model with Torch-Pruning (Fang et al., *DepGraph: Towards Any Structural
Pruning*, CVPR 2023): the dependency graph finds every layer that must lose the same channels
as the one cut (a residual sum, a concatenation, the BatchNorm after a convolution), so the
cut model is smaller and still runs.

Criterion: each group of coupled channels is ranked by the L2 norm of its weights
(``GroupMagnitudeImportance(p=2)``, Torch-Pruning's default group-level magnitude), and the
same share of channels leaves every prunable layer (not a global ranking, which can empty a
layer). The layers whose outputs are the classes are kept whole.

A cut is rebuilt without Torch-Pruning's pickled state: ``sizes`` records the in and out
channels of every prunable layer, ``shrink`` cuts a freshly built model of the same
architecture to them (trailing channels removed: the weights are loaded after).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kdexport.errors import KdxError

HINT = "pip install 'kdexport[prune]' (Torch-Pruning)"
CRITERION = "L2 norm of each channel group's weights (Torch-Pruning GroupMagnitudeImportance, p=2)"
MAX_RATIO = 0.95  # a cut that keeps under 5% of every layer's channels is no longer the model


def torch_pruning():
    """The ``torch_pruning`` module, or the one line naming the extra."""
    try:
        return importlib.import_module("torch_pruning")
    except ImportError as e:
        raise KdxError(f"prune: students need Torch-Pruning: {HINT} ({e})") from None


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(multiply-accumulates of one input, parameters), as Torch-Pruning counts them."""
    tp = torch_pruning()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(macs), int(params)


def _classifier(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers whose outputs are the classes: kept whole by every cut."""
    kept = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)
    ]
    if not kept:
        raise KdxError(
            f"prune: no layer of the teacher outputs its {num_classes} classes (a Linear or "
            "Conv2d); the cut would change the classes: give a student architecture instead"
        )
    return kept


def channels(model: nn.Module) -> dict[str, list[int]]:
    """[out, in] channels of every layer Torch-Pruning can cut, by module name."""
    tp = torch_pruning()
    out = {}
    for name, m in model.named_modules():
        pruner = tp.PrunerBox.get(tp.ops.module2type(m))
        if pruner is not None and any(True for _ in m.parameters(recurse=False)):
            out[name] = [int(pruner.get_out_channels(m)), int(pruner.get_in_channels(m))]
    return out


def _channel_record(model: nn.Module, example: torch.Tensor) -> dict:
    """What rebuilds a channel cut: the classes and input channels its base was built for,
    and the channels of every prunable layer."""
    with torch.no_grad():
        num_classes = int(model.eval()(example).shape[-1])
    return {"num_classes": num_classes, "in_channels": int(example.shape[1]),
            "channels": channels(model)}  # fmt: skip


def _channel_rebuild(saved: dict, build: Callable) -> nn.Module:
    """A channel cut with fresh weights: its base built (``build(spec, num_classes,
    in_channels)``) and shrunk to the recorded channels."""
    for key in ("num_classes", "in_channels", "channels"):
        if key not in saved:
            raise KdxError(f"a pruned model's structure lacks '{key}'; cut the teacher again")
    model = build(saved["base"], saved["num_classes"], saved["in_channels"])
    return shrink(model, saved["channels"])


@dataclass(frozen=True)
class Cutter:
    """How one family of models is cut (a modality's ``cutter()``; the default is ``CHANNELS``):

    - ``what``: what a ratio is a share of (the record's words);
    - ``options(model, ratio)``: what Torch-Pruning is told (attention heads; the ratio it
      gets, where the family rounds it);
    - ``snap(model, ratio)``: the nearest ratio the family can take (heads come whole);
    - ``settle(model)``: what follows the new shapes (attributes, the config);
    - ``record(model, example)`` -> the structure that rebuilds a cut, and
      ``rebuild(saved, build)`` -> it, fresh weights (``build(spec, num_classes, in_channels)``
      makes the architecture it was cut from);
    - ``layers(model, example, share)`` -> (model, record): whole layers removed
      (``prune:depth=``; None: the family has no stack of like layers to remove)."""

    name: str
    what: str = "of each layer's channels"  # what a ratio is a share of, for the record
    options: Callable[[nn.Module, float], dict] = lambda model, ratio: {}
    snap: Callable[[nn.Module, float], float] = lambda model, ratio: ratio
    settle: Callable[[nn.Module], None] = lambda model: None
    record: Callable[[nn.Module, torch.Tensor], dict] = _channel_record
    rebuild: Callable[[dict, Callable], nn.Module] = _channel_rebuild
    layers: Callable | None = None


CHANNELS = Cutter("channels")  # every prunable layer's channels: convolutional networks


def cut(
    model: nn.Module, example: torch.Tensor, ratio: float, cutter: Cutter = CHANNELS
) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the channels of every prunable layer removed (as
    ``cutter`` cuts its family: a transformer loses whole heads)."""
    tp = torch_pruning()
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        num_classes = net(example).shape[-1]
    try:
        pruner = tp.pruner.MetaPruner(
            net,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            ignored_layers=_classifier(net, num_classes),
            **{"pruning_ratio": ratio, **cutter.options(net, ratio)},
        )
        pruner.step()
    except KdxError:
        raise
    except Exception as e:  # Torch-Pruning raises many types on graphs it cannot trace
        raise KdxError(
            f"prune: Torch-Pruning cannot cut this model ({type(e).__name__}: {e}); give a "
            "student architecture instead"
        ) from None
    cutter.settle(net)
    _check_runs(net, example)
    return net


def _check_runs(net: nn.Module, example: torch.Tensor) -> None:
    """The cut model still runs; else the first layer whose input no longer fits."""
    try:
        with torch.no_grad():
            net(example)
    except Exception as e:  # a layer whose coupled channels the graph did not see
        raise KdxError(
            f"prune: the cut model fails to run ({type(e).__name__}: {str(e).splitlines()[0]}): "
            "a layer the dependency graph could not follow (attention heads, a reshape); give "
            "a student architecture instead"
        ) from None


def cut_to_macs(
    model: nn.Module, example: torch.Tensor, share: float, cutter: Cutter = CHANNELS
) -> tuple[nn.Module, float]:
    """The least cut whose MACs are at most ``share`` of ``model``'s, and its ratio (bisection
    over the ratio: MACs fall as it rises)."""
    full = count(model, example)[0]
    lo, hi, best = 0.0, MAX_RATIO, None
    for _ in range(12):
        mid = (lo + hi) / 2
        ratio = cutter.snap(model, mid)
        net = cut(model, example, ratio, cutter)
        if count(net, example)[0] <= share * full:
            hi, best = mid, (net, ratio)
        else:
            lo = mid
    if best is None:
        smallest = cut(model, example, cutter.snap(model, MAX_RATIO), cutter)
        reached = count(smallest, example)[0] / full
        raise KdxError(
            f"prune:macs={share}: the smallest cut ({MAX_RATIO:.0%} of the channels) keeps "
            f"{reached:.3f} of the MACs; give macs= of at least {reached:.3f}"
        )
    return best


def shrink(model: nn.Module, sizes: dict[str, list[int]]) -> nn.Module:
    """``model`` (the architecture a cut was made from) cut to the recorded ``sizes``."""
    tp = torch_pruning()
    layers = dict(model.named_modules())
    for name, (out, inn) in sizes.items():
        m = layers.get(name)
        pruner = None if m is None else tp.PrunerBox.get(tp.ops.module2type(m))
        if pruner is None:
            raise KdxError(
                f"pruned model: layer '{name}' is not in the architecture it was cut from; "
                "rebuild it with the kdexport and model versions that made it"
            )
        have = int(pruner.get_out_channels(m))
        if have > out:
            pruner.prune_out_channels(m, list(range(out, have)))
        have = int(pruner.get_in_channels(m))
        if have > inn:
            pruner.prune_in_channels(m, list(range(inn, have)))
    return model


def reinitialise(model: nn.Module) -> nn.Module:
    """Fresh weights of the same shapes (each layer's own ``reset_parameters``): the cut
    architecture trained from scratch, as the baseline."""
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return model
