"""Students cut from the teacher (issue 23): the ``prune:`` model specs.

    prune:0.5                  half the channels of every prunable layer removed (a
                               transformer: half its heads, hidden and intermediate width)
    prune:macs=0.3             the least cut that keeps at most 30% of the teacher's MACs
    prune:depth=0.5            half a transformer's layers removed, the least important first
    prune:budget_ms=0.5@ort-cpu  cut in steps until the p90 on that target meets 0.5 ms
                               (the prune stage, kdexport.prune: NetAdapt's loop)

The distill stage derives the student from the trained teacher (``kdexport.pruning.cut``:
Torch-Pruning's dependency graph, the classifier kept; the run's modality says how its models
are cut, ``Modality.cutter``) and distills it from the unpruned teacher. The scratch baseline
is the same architecture with fresh weights. The student's record (``init``) says what was
removed, the criterion, and the MACs and parameters before and after; a trained cut is rebuilt
from ``structure.json`` beside its weights (``pruned:`` spec). ``kdexport.zoo`` registers the
two schemes; this package holds what they do.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdexport import modalities
from kdexport.errors import KdxError

Rebuild = Callable[[str], nn.Module]  # a ``pruned:PATH`` spec -> the cut, fresh weights
Build = Callable[[str, int, int], nn.Module]  # (spec, num_classes, in_channels) -> a model

STRUCTURE = "structure.json"  # a trained cut's architecture, beside its weights


def parse(spec: str) -> dict:
    """``prune:0.5`` -> {"ratio": 0.5}; ``prune:macs=0.3`` -> {"macs": 0.3};
    ``prune:depth=0.5`` -> {"depth": 0.5};
    ``prune:budget_ms=0.5@ort-cpu`` -> {"budget_ms": 0.5, "target": "ort-cpu"}."""
    body = spec.partition(":")[2].strip()
    key, _, value = body.partition("=") if "=" in body else ("ratio", "=", body)
    value, _, target = value.partition("@")
    forms = "prune:RATIO, prune:macs=SHARE, prune:depth=SHARE or prune:budget_ms=MS@TARGET"
    if key not in ("ratio", "macs", "depth", "budget_ms") or (key == "budget_ms") != bool(target):
        raise KdxError(f"student spec '{spec}': give {forms}")
    try:
        number = float(value)
    except ValueError:
        raise KdxError(f"student spec '{spec}': '{value}' is not a number; give {forms}") from None
    if key == "budget_ms":
        if number <= 0:
            raise KdxError(f"student spec '{spec}': a latency budget must be above 0 ms")
        return {"budget_ms": number, "target": target.strip()}
    if not 0 < number < 1:
        what = {"ratio": "share of channels to remove", "macs": "share of MACs to keep",
                "depth": "share of layers to remove"}[key]  # fmt: skip
        raise KdxError(f"student spec '{spec}': {number} is outside (0, 1): give the {what}")
    return {key: number}


def student(parent, spec: str, seed: int, from_teacher: bool, rebuild: Rebuild):
    """The cut ``spec`` names of ``parent`` (a ``kdexport.zoo.Parent``: the teacher), with its
    record; fresh weights of the same shapes unless ``from_teacher`` (the baseline trained from
    scratch; ``build_student`` seeded them). A budget spec's cut is the one the prune stage
    found (``kdexport.prune``), ``rebuild`` from its structure file."""
    from kdexport.pruning import cut

    want, cutter = parse(spec), cutter_of(parent.modality)
    before = cut.count(parent.model, parent.example)
    record = {"pruned_from": parent.spec, "criterion": cut.CRITERION, **want}
    if "budget_ms" in want:
        net, record["ratio"] = _searched(parent, spec, rebuild)
    elif "macs" in want:
        net, record["ratio"] = cut.cut_to_macs(parent.model, parent.example, want["macs"], cutter)
    elif "depth" in want:
        if cutter.layers is None:
            raise KdxError(
                f"student spec '{spec}': prune:depth= removes a transformer's layers, and a "
                f"{parent.modality} teacher is cut by its channels; give prune:RATIO or "
                "prune:macs=SHARE"
            )
        net, layers = cutter.layers(parent.model, parent.example, want["depth"])
        record.update(layers)
    else:
        record["ratio"] = cutter.snap(parent.model, want["ratio"])
        net = cut.cut(parent.model, parent.example, record["ratio"], cutter)
    if "ratio" in record:
        record["removed"] = f"{record['ratio']:.3f} {cutter.what}"
    record.update(describe(parent.model, net, parent.example, before))
    if not from_teacher:
        cut.reinitialise(net)
    record["weights"] = "the teacher's, cut" if from_teacher else "random (scratch baseline)"
    net.structure = structure(net, parent.spec, parent.example, parent.modality)
    return net, record


def cutter_of(modality: str):
    """How ``modality``'s models are cut (``kdexport.pruning.cut.Cutter``)."""
    from kdexport.pruning import cut

    return modalities.get(modality).cutter() or cut.CHANNELS


def structure(net: nn.Module, base: str, example: torch.Tensor, modality: str) -> dict:
    """What rebuilds a cut: the run's modality (how it was cut), the spec it was cut from and
    what its cutter records (a network's channels, a transformer's config)."""
    return {"modality": modality, "base": base, **cutter_of(modality).record(net, example)}


def rebuild(saved: dict, build: Build) -> nn.Module:
    """The cut ``saved`` (``read_structure``) describes, fresh weights, in eval mode."""
    net = cutter_of(saved["modality"]).rebuild(saved, build)
    net.structure = saved
    return net.eval()


def _searched(parent, spec: str, rebuild: Rebuild) -> tuple[nn.Module, float]:
    """The cut the prune stage found for a budget (its recovered weights), or before the search
    (the pre-flight check) the whole teacher."""
    from kdexport.artifact import Artifact

    if parent.searched is None:
        return copy.deepcopy(parent.model), 0.0
    art = Artifact.open(
        parent.searched, "prune", "kdexport distill-and-export (it runs the search)"
    )
    if art.parameters.get("student") != spec:
        raise KdxError(
            f"{parent.searched} was cut for '{art.parameters.get('student')}', not '{spec}'; "
            "run kdexport distill-and-export again (it runs the search)"
        )
    net = rebuild(f"pruned:{art.file(STRUCTURE)}")
    net.load_state_dict(torch.load(art.file("model.pt"), map_location="cpu", weights_only=True))
    return net, art.checks["chosen"]["ratio"]


def describe(teacher: nn.Module, net: nn.Module, example, before=None) -> dict:
    """MACs and parameters before and after, and the layers that lost channels."""
    from kdexport.pruning import cut

    before = before or cut.count(teacher, example)
    after = cut.count(net, example)
    old, new = cut.channels(teacher), cut.channels(net)
    removed = {k: [old[k][0], v[0]] for k, v in new.items() if k in old and old[k][0] != v[0]}
    return {
        "macs": [before[0], after[0]],
        "params": [before[1], after[1]],
        "macs_ratio": after[0] / before[0],
        "params_ratio": after[1] / before[1],
        "out_channels_cut": removed,
    }


def is_budget(spec: str) -> bool:
    """Whether ``spec`` is a ``prune:budget_ms=`` student (the prune stage searches for it)."""
    return spec.partition(":")[0] == "prune" and "budget_ms" in parse(spec)


def save_structure(net: nn.Module, folder: Path) -> str:
    """Write the structure a trained cut is rebuilt from; the spec that rebuilds it."""
    (folder / STRUCTURE).write_text(json.dumps(net.structure, indent=1))
    return f"pruned:{{artifact}}/{STRUCTURE}"


def read_structure(spec: str) -> dict:
    """The structure a ``pruned:PATH`` spec names: ``modality``, ``base`` and what the
    modality's cutter recorded (``rebuild`` makes the cut from it)."""
    path = Path(spec.partition(":")[2])
    try:
        saved = json.loads(path.read_text())
        if not {"modality", "base"} <= set(saved):
            raise KeyError("a key")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise KdxError(f"model spec '{spec}': {path} is not a pruned model's structure") from None
    return saved
