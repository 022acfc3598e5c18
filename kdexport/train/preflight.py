"""Pre-flight checks before any training: the loss weighting, the teacher in eval mode, teacher and
student on the data's inputs with the same number of classes, the feature-loss layers (image
losses) or the two transformers' sizes (text losses)."""

from __future__ import annotations

import torch
from torch import nn

from kdexport import modalities
from kdexport.data import Splits
from kdexport.errors import KdxError
from kdexport.losses import LOSSES
from kdexport.onnx_teacher import OnnxModel
from kdexport.zoo import eval_mode


def check_weighting(weighting: str, kd_weight: float) -> None:
    """The seed's form (1 - w)·CE + w·KD needs w in [0, 1]."""
    if weighting == "alpha" and kd_weight > 1:
        raise KdxError(f"distill.kd_weight = {kd_weight} must be in [0, 1] with weighting 'alpha'")


def outputs(m: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    device = next((p.device for p in m.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            return m(x.to(device)).cpu()
    except Exception as e:  # any failure here means the model does not fit the data
        raise KdxError(f"the {name} cannot run on inputs of shape {tuple(x.shape)}: {e}") from None


def _check_teacher_is_evaluating(teacher: nn.Module, x: torch.Tensor) -> None:
    """A teacher in eval mode gives each sample the same outputs whatever else is in the batch."""
    a, b = outputs(teacher, "teacher", x), outputs(teacher, "teacher", x[:2])
    if not torch.allclose(a[:2].float(), b.float(), rtol=1e-3, atol=1e-4):
        raise KdxError(
            "the teacher's outputs for a sample change with the rest of the batch or between "
            "calls (dropout or batch norm in training mode?); give a teacher in eval mode"
        )


def _feature_shapes(teacher, student, opts: dict, x: torch.Tensor, modality: str):
    """Pre-flight for a feature loss, as the loss does it (``losses``): both layers exist and
    their shapes can be adapted, or the models fit what the modality taps (the loss's sizes)."""
    if opts["feature_loss"] == "none":
        return None
    loss = LOSSES[opts["feature_loss"]]
    return loss.preflight(teacher, student, opts, x, outputs, modalities.get(modality))


def check_models(teacher: nn.Module, student: nn.Module, splits: Splits, opts: dict):
    """Pre-flight: the teacher evaluates, both fit the data and agree on the classes, the
    feature-loss layers exist and can be adapted (or the transformers' sizes fit a text loss).
    Returns the feature shapes or text-loss sizes (or None)."""
    x = torch.from_numpy(splits.x_val.head(4))
    eval_mode(teacher)
    _check_teacher_is_evaluating(teacher, x)
    t, s = outputs(teacher, "teacher", x).shape, outputs(eval_mode(student), "student", x).shape
    if tuple(t) != tuple(s) or s[1] != splits.num_classes:
        hint = ""
        if isinstance(teacher, OnnxModel):  # it may read the wrong output
            hint = (
                f" (the ONNX teacher's output '{teacher.output_name}'; teacher.output names "
                f"another of {', '.join(teacher.outputs)})"
            )
        raise KdxError(
            f"teacher outputs {tuple(t)}, student {tuple(s)}; both need "
            f"{splits.num_classes} classes{hint}"
        )
    return _feature_shapes(teacher, student, opts, x, splits.modality)
