"""The model families image users have: ``torchvision:NAME`` and ``timm:NAME`` (extra ``vision``).

    torchvision:resnet18
    torchvision:mobilenet_v3_small?weights=weights/mobilenet.pth
    timm:vit_tiny_patch16_224?img_size=64&weights=vit.safetensors

Options follow a ``?``, joined by ``&``: ``weights`` (a local state_dict, ``.pt``/``.pth`` read
with ``weights_only=True``, or ``.safetensors``; nothing is ever downloaded) and, for timm,
``img_size`` (the input size of models that fix one, such as ViTs). The model is built for the
data's class count; weights saved for another count (ImageNet's 1000) load into a head of their
size, which is then replaced by a fresh one. A one-channel input takes the RGB weights summed
over the first convolution's input channels, which is the same model as the RGB one fed the grey
image on all three channels. What was done is in ``model.init_record``.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import torch
from torch import nn

from kdexport.errors import KdxError
from kdexport.zoo import Scheme

OPTIONS = {"torchvision": ("weights",), "timm": ("weights", "img_size")}
HINT = "pip install 'kdexport[vision]' (torchvision and timm)"


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``SCHEME:NAME?k=v&k=v`` as (scheme, name, options), the options checked by name."""
    scheme, _, rest = spec.partition(":")
    name, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not value or key not in OPTIONS[scheme]:
            raise KdxError(
                f"model spec '{spec}': '{item}' is not an option of {scheme}:; give "
                f"{' or '.join(f'{k}=VALUE' for k in OPTIONS[scheme])} after '?', joined by '&'"
            )
        options[key] = value
    if not name:
        raise KdxError(f"model spec '{spec}': name the architecture, e.g. {scheme}:resnet18")
    return scheme, name, options


def import_error(spec: str, module: str, error: Exception) -> KdxError:
    """The one line for a family package that is missing or does not fit the installed torch."""
    if "torchvision::nms does not exist" in str(error):
        return KdxError(
            f"model spec '{spec}': the installed torchvision was not built for torch "
            f"{torch.__version__} (operator torchvision::nms does not exist); install the "
            "torchvision release made for this torch build (tools/test-vision.sh pins a pair)"
        )
    return KdxError(f"model spec '{spec}' needs the vision extra: {HINT}; {module}: {error}")


def _import(spec: str, module: str):
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError) as e:  # torchvision raises RuntimeError on a torch mismatch
        raise import_error(spec, module, e) from None


def _unknown(spec: str, name: str, known: list[str]) -> KdxError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"close: {', '.join(close)}" if close else f"{len(known)} known, e.g. {known[0]}"
    return KdxError(f"model spec '{spec}': unknown model '{name}'; {hint}")


def _build_torchvision(spec: str, name: str, options: dict, num_classes: int) -> nn.Module:
    tv = _import(spec, "torchvision")
    known = tv.models.list_models()
    if name not in known:
        raise _unknown(spec, name, known)
    return tv.models.get_model(name, weights=None, num_classes=num_classes)  # never downloads


def _build_timm(spec: str, name: str, options: dict, num_classes: int) -> nn.Module:
    timm = _import(spec, "timm")
    if not timm.is_model(name):
        raise _unknown(spec, name, timm.list_models())
    kwargs = {"img_size": _int(spec, options["img_size"])} if "img_size" in options else {}
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:  # img_size given to a model that takes no such argument
        raise KdxError(f"model spec '{spec}': {name} does not take these options ({e})") from None


def _int(spec: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise KdxError(f"model spec '{spec}': img_size={text} must be a positive integer")
    return int(text)


def head_path(model: nn.Module) -> str:
    """The dotted name of the classifier head: timm says it; torchvision's families use ``fc``
    (ResNet, RegNet, ...), ``classifier`` ending in a Linear (MobileNet, EfficientNet, ...),
    ``heads.head`` (ViT) or ``head`` (Swin, MaxViT)."""
    cfg = getattr(model, "pretrained_cfg", None)
    candidates = [cfg["classifier"]] if cfg and cfg.get("classifier") else []
    candidates += ["fc", "classifier", "heads.head", "head"]
    for path in candidates:
        module = _get(model, path)
        if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Linear):
            return f"{path}.{len(module) - 1}"
        if isinstance(module, nn.Linear):
            return path
    return ""


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set_head(model: nn.Module, path: str, classes: int) -> None:
    old = model.get_submodule(path)
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent), leaf, nn.Linear(old.in_features, classes))


def read_weights(spec: str, path_text: str) -> dict[str, torch.Tensor]:
    """A state_dict from a local file: safetensors, or torch's weights-only loader."""
    path = Path(path_text)
    if not path.is_file():
        raise KdxError(f"model spec '{spec}': weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise KdxError(f"weights {path}: .safetensors files need {HINT}") from None
    except Exception as e:  # torch and safetensors raise many types for files that are not weights
        raise KdxError(
            f"weights {path}: not a readable state_dict ({type(e).__name__}); save "
            "model.state_dict() with torch.save or safetensors"
        ) from None
    for key in ("model", "state_dict"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise KdxError(f"weights {path}: holds a {type(state).__name__}, not a state_dict")
    return state


def _first_misfit(model: nn.Module, state: dict) -> str:
    """The first key that does not fit, with both shapes, or '' when all fit."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            return f"{key} is missing from the file"
        if tuple(state[key].shape) != tuple(value.shape):
            return (
                f"{key} is {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
            )
    extra = [k for k in state if k not in own]
    return f"{extra[0]} in the file is not in the model" if extra else ""


def load_weights(model: nn.Module, spec: str, path: str, num_classes: int) -> dict:
    """Load ``path`` into ``model``; a head of another class count is loaded, then replaced."""
    state = read_weights(spec, path)
    record: dict = {"weights": path}
    head = head_path(model)
    file_head = state.get(f"{head}.weight") if head else None
    if file_head is not None and file_head.ndim == 2 and file_head.shape[0] != num_classes:
        _set_head(model, head, file_head.shape[0])
        record["head"] = {
            "module": head,
            "from_classes": file_head.shape[0],
            "to_classes": num_classes,
        }
    misfit = _first_misfit(model, state)
    if misfit:
        raise KdxError(
            f"weights {path} do not fit '{spec}': {misfit}; give weights saved from this "
            "architecture, or name the architecture they were saved from"
        )
    model.load_state_dict(state)
    if "head" in record:
        _set_head(model, head, num_classes)  # a fresh head for the data's classes
    return record


def _input_conv(model: nn.Module) -> tuple[str, nn.Conv2d | None]:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg and cfg.get("first_conv"):
        return cfg["first_conv"], _get(model, cfg["first_conv"])
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))


def adapt_channels(model: nn.Module, spec: str, in_channels: int) -> dict:
    """Fit the RGB input convolution to ``in_channels``: 1 sums its weights over R, G and B."""
    if in_channels == 3:
        return {}
    name, conv = _input_conv(model)
    if in_channels != 1 or not isinstance(conv, nn.Conv2d) or conv.in_channels != 3:
        raise KdxError(
            f"model spec '{spec}' takes RGB (or grey) images, not {in_channels} channels; "
            'set data.image_mode = "RGB" or give 1- or 3-channel arrays'
        )
    conv.weight = nn.Parameter(conv.weight.detach().sum(1, keepdim=True))
    conv.in_channels = 1
    return {"input_conv": {"module": name, "rule": "RGB weights summed for 1-channel input"}}


def build(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """``torchvision:NAME`` or ``timm:NAME``, with ``?weights=PATH`` and ``?img_size=N``."""
    scheme, name, options = parse_spec(spec)
    builder = _build_torchvision if scheme == "torchvision" else _build_timm
    model = builder(spec, name, options, num_classes)
    record: dict = {"init": "weights" if "weights" in options else "random"}
    if "weights" in options:
        record.update(load_weights(model, spec, options["weights"], num_classes))
    record.update(adapt_channels(model, spec, in_channels))
    model.init_record = record
    return model


# The model-spec schemes of images (kdexport.zoo.Scheme): torchvision's and timm's families.
SCHEMES = {"torchvision": Scheme(build), "timm": Scheme(build)}
