"""Built-in architectures and ``create_model(spec)`` for every model-spec form.

Spec forms that build a model (and train it, or load a state_dict into it): ``SCHEME:REST``
for a scheme of ``schemes()`` (``zoo:NAME``, a factory below, and the schemes each modality
registers, e.g. text's ``hf:``) and ``path/to/file.py:factory`` (user code, which runs because
the user named it); a factory gets ``num_classes`` and ``in_channels`` if it takes them.

Spec forms that are a complete model file, used as they are: a TorchScript file (``.pt``,
``.ts``, ...), a ``torch.export`` program (``.pt2``), an ONNX model (``.onnx``, run by ONNX
Runtime, so a teacher from any framework can teach; see ``kdexport.onnx_teacher``) and, only with ``trust_pickle``, a pickled
full ``nn.Module`` (unpickling runs code from the file).
"""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdexport.errors import KdxError
from kdexport.modalities import DEFAULT
from kdexport.onnx_teacher import OnnxModel


def _cnn(channels: list[int], hidden: int, num_classes: int, in_channels: int) -> nn.Module:
    """Conv blocks (3x3 conv, BN, ReLU, then 2x2 max-pool after every block but the first)."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    if hidden:
        head += [
            nn.Linear(c_in * 4, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        ]
    else:
        head.append(nn.Linear(c_in * 4, num_classes))
    return nn.Sequential(*layers, *head)


def digits_cnn_large(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The default teacher: 900 k parameters, 20 M FLOPs on one 8x8 image."""
    return _cnn([64, 128, 256], 512, num_classes, in_channels)


def digits_cnn_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The default student: 6.2 k parameters (145x fewer), 0.6 M FLOPs."""
    return _cnn([16, 32], 0, num_classes, in_channels)


def mlp_tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A 1.2 k-parameter MLP (16 hidden units) for 8x8 inputs: the tests' model, and the
    label-scarce recipe's student (the size of model a microcontroller runs)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 64, 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


ZOO = {
    "digits-cnn-large": digits_cnn_large,
    "digits-cnn-small": digits_cnn_small,
    "mlp-tiny": mlp_tiny,
}


def load_factory(spec: str, what: str = "model spec"):
    """The callable that ``path/to/file.py:name`` names (importing the file runs it)."""
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise KdxError(f"{what} '{spec}': {path} does not exist; give file.py:factory")
    module_spec = importlib.util.spec_from_file_location(f"kdexport_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # user code: any failure is theirs to fix
        raise KdxError(f"{what} '{spec}': importing {path} failed ({type(e).__name__}: {e})") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise KdxError(f"{what} '{spec}': {path} has no callable '{name}'")
    return factory


@dataclass(frozen=True)
class Parent:
    """The teacher a student is built from: the model, the spec it was built from (rebuilds its
    architecture; "" where unknown), a few inputs (to trace it), the folder where the run's
    search for a cut of it (``kdexport.prune``) left its result (None: before the search) and
    the run's modality (how a cut of it is made)."""

    model: nn.Module
    spec: str = ""
    example: torch.Tensor | None = None
    searched: Path | None = None
    modality: str = DEFAULT


@dataclass(frozen=True)
class Scheme:
    """A model-spec scheme: how ``SCHEME:REST`` builds a model, and where it can, a student of a
    teacher (``student(parent: Parent, spec, seed, from_teacher) -> (model, init record)``) and
    the files a trained one is rebuilt from (``save(model, folder) -> spec``)."""

    build: Callable[[str, int, int], nn.Module]  # (spec, num_classes, in_channels)
    student: Callable | None = None
    save: Callable | None = None


def _zoo(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    name = spec.partition(":")[2]
    if name not in ZOO:
        raise KdxError(f"unknown zoo model '{name}'; known: {', '.join(sorted(ZOO))}")
    return _from_factory(ZOO[name], spec, num_classes, in_channels)


def _pruned(spec: str, num_classes: int = 0, in_channels: int = 0) -> nn.Module:
    """``pruned:PATH/structure.json``: a cut as its structure records it (a network's base
    built and cut to its channels, a transformer's config); fresh weights."""
    from kdexport import pruning

    return pruning.rebuild(pruning.read_structure(spec), create_model)


def _cut_student(parent: Parent, spec: str, seed: int, from_teacher: bool = True):
    """``prune:...``: a cut of the teacher (``kdexport.pruning.student``)."""
    from kdexport import pruning

    if parent.spec and is_model_file(parent.spec):
        raise KdxError(
            f"distill.student '{spec}' cuts the teacher's weights, and the teacher "
            f"'{parent.spec}' is a model file with no architecture to rebuild (ONNX, "
            "TorchScript, .pt2); name the teacher as zoo:, file.py:factory, torchvision: or "
            "timm:, or give a student architecture"
        )
    return pruning.student(parent, spec, seed, from_teacher, _pruned)


def _refused_cut(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    raise KdxError(f"'{spec}' is a cut of the teacher: give it as distill.student")


def schemes() -> dict[str, Scheme]:
    """Every model-spec scheme: ``zoo``, pruning's (``prune:``, ``pruned:``) and those the
    modalities register."""
    from kdexport import modalities, pruning

    found = {
        "zoo": Scheme(_zoo),
        "prune": Scheme(_refused_cut, _cut_student, pruning.save_structure),
        "pruned": Scheme(_pruned),
    }
    for modality in modalities.every():
        found.update(modality.schemes)
    return found


def scheme_of(spec: str) -> Scheme | None:
    """The scheme ``spec`` is written in, or None (a file, or ``file.py:factory``)."""
    name, sep, _ = spec.partition(":")
    if not sep or ".py" in name or "/" in name or len(name) < 2:  # a path, or a drive letter
        return None
    known = schemes()
    if name not in known:
        raise KdxError(
            f"model spec '{spec}': no modality knows the scheme '{name}:'; known: "
            f"{', '.join(f'{k}:' for k in sorted(known))}, file.py:factory or a model file"
        )
    return known[name]


def is_model_file(spec: str) -> bool:
    """Whether ``spec`` names a complete model file (used as it is) rather than a factory."""
    return scheme_of(spec) is None and ".py:" not in spec


def _torch_file(path: Path, trust_pickle: bool) -> nn.Module:
    """A TorchScript file, or (trusted only) a pickled full module; a state_dict is refused."""
    if zipfile.is_zipfile(path) and any("/code/" in n for n in zipfile.ZipFile(path).namelist()):
        return torch.jit.load(str(path), map_location="cpu")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise KdxError(
                f"{path} is a pickled model: loading it runs code from the file. Save a state_dict "
                "(or TorchScript, .pt2, ONNX) instead, or set teacher.trust_pickle = true if you trust it"
            ) from None
        model = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(model, nn.Module):
            raise KdxError(
                f"{path} holds a {type(model).__name__}, not a torch nn.Module"
            ) from None
        return model
    except Exception as e:  # torch raises many types for files that are not checkpoints
        raise KdxError(
            f"{path}: not a TorchScript, .pt2, ONNX or pickled model ({type(e).__name__})"
        ) from None
    raise KdxError(
        f"{path} holds weights only; name the architecture as the model (zoo:NAME or "
        "file.py:factory) and give this file as the checkpoint"
    )


def _model_file(spec: str, trust_pickle: bool, onnx_view: dict) -> nn.Module:
    path = Path(spec)
    if not path.is_file():
        raise KdxError(
            f"model spec '{spec}': no such file; use zoo:NAME, path/to/file.py:factory, hf:PATH or an "
            "existing .onnx/.pt2/TorchScript model file"
        )
    if path.suffix == ".onnx":
        return OnnxModel(path, **onnx_view)
    if path.suffix == ".pt2":
        try:
            return torch.export.load(path).module()
        except Exception as e:  # the loader raises many types for bad files
            raise KdxError(
                f"{path}: not a loadable torch.export program ({type(e).__name__})"
            ) from None
    return _torch_file(path, trust_pickle)


def eval_mode(model: nn.Module) -> nn.Module:
    """``model.eval()``; an exported program (already captured in one mode) refuses it."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def create_model(
    spec: str,
    num_classes: int,
    in_channels: int,
    trust_pickle: bool = False,
    *,
    output: str = "",
    output_kind: str = "auto",
    sample_shape: tuple | None = None,
) -> nn.Module:
    """Build (or load) the model that ``spec`` names, in eval mode.

    An ONNX model file reads its output ``output`` holding ``output_kind`` scores and is checked
    against samples of ``sample_shape`` (see ``kdexport.onnx_teacher``); other specs refuse them.
    """
    if (output or output_kind != "auto") and not spec.endswith(".onnx"):
        raise KdxError(
            f"teacher.output and teacher.output_kind apply to ONNX teachers, not to '{spec}'; "
            'leave them at "" and "auto"'
        )
    if is_model_file(spec):
        view = {"output": output, "output_kind": output_kind, "sample_shape": sample_shape}
        return eval_mode(_model_file(spec, trust_pickle, view))
    scheme = scheme_of(spec)
    if scheme is not None:
        return eval_mode(scheme.build(spec, num_classes, in_channels))
    return _from_factory(load_factory(spec), spec, num_classes, in_channels)


def _from_factory(factory, spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """What ``factory`` returns, given the arguments it takes, checked to be a module."""
    params = inspect.signature(factory).parameters
    given = {"num_classes": num_classes, "in_channels": in_channels}
    try:
        model = factory(**{k: v for k, v in given.items() if k in params})
    except Exception as e:  # user code: any failure is theirs to fix
        raise KdxError(f"model spec '{spec}': the factory failed ({type(e).__name__}: {e})") from e
    if not isinstance(model, nn.Module):
        raise KdxError(
            f"model spec '{spec}': the factory returned {type(model).__name__}, not a torch nn.Module"
        )
    return model.eval()


def load_checkpoint(model: nn.Module, path: str | Path, spec: str) -> nn.Module:
    """Load a state_dict checkpoint (weights only: no code is unpickled) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise KdxError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or non-weights files
        raise KdxError(
            f"checkpoint {path}: not a readable weights-only state_dict ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise KdxError(f"checkpoint {path}: holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise KdxError(f"checkpoint {path} does not fit '{spec}': {first}") from None
    return model.eval()
