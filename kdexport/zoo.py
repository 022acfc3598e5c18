"""Built-in architectures and ``create_model(spec)`` for every model-spec form.

Spec forms: ``zoo:NAME`` (a factory below) and ``path/to/file.py:factory`` (user code, which runs
because the user named it). A factory gets ``num_classes`` and ``in_channels`` if it takes them.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import torch
from torch import nn

from kdexport.errors import KdxError


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
    """A tiny MLP for tests (needs 8x8 inputs)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 64, 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


ZOO = {
    "digits-cnn-large": digits_cnn_large,
    "digits-cnn-small": digits_cnn_small,
    "mlp-tiny": mlp_tiny,
}


def _user_factory(spec: str):
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise KdxError(f"model spec '{spec}': {path} does not exist; give file.py:factory")
    module_spec = importlib.util.spec_from_file_location(f"kdexport_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # user code: any failure is theirs to fix
        raise KdxError(
            f"model spec '{spec}': importing {path} failed ({type(e).__name__}: {e})"
        ) from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise KdxError(f"model spec '{spec}': {path} has no callable '{name}'")
    return factory


def create_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build the model that ``spec`` names, in eval mode."""
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in ZOO:
            raise KdxError(f"unknown zoo model '{name}'; known: {', '.join(sorted(ZOO))}")
        factory = ZOO[name]
    elif ".py:" in spec:
        factory = _user_factory(spec)
    else:
        raise KdxError(f"model spec '{spec}': use zoo:NAME or path/to/file.py:factory")
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
