"""Distillation losses, looked up by name in ``LOSSES``, and the objective that weights them.

A loss maps (student, teacher, labels) to a scalar batch mean. Logit losses get the models'
outputs; feature losses (``inputs = "features"``) get the outputs of one named intermediate
layer of each model, read by a ``LayerTap``. A label of -1 (``UNLABELED``) marks a transfer
sample without a label: only the teacher's outputs teach on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdexport.errors import KdxError

UNLABELED = -1


class CELoss(nn.Module):
    """Cross-entropy with the labels: CE(y, s) = -mean_{i labeled} log softmax(s_i)[y_i].

    Averaged over the labeled samples of the batch only; 0 for a batch without any label.
    """

    inputs = "logits"

    def forward(self, student: torch.Tensor, teacher, labels: torch.Tensor) -> torch.Tensor:
        labeled = labels != UNLABELED
        if not bool(labeled.any()):
            return student.sum() * 0.0  # keeps the graph: the other terms may still train
        return F.cross_entropy(student[labeled].float(), labels[labeled])


class KDLoss(nn.Module):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    KD = T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T)),
    a forward KL from the teacher's softened distribution to the student's, summed over classes
    and averaged over the batch ("batchmean": ``reduction="mean"`` would also divide by the class
    count). T^2 keeps the gradient scale independent of T, with or without labels.
    """

    inputs = "logits"

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
        t = self.temperature
        log_p_s = F.log_softmax(student.float() / t, dim=1)
        log_p_t = F.log_softmax(teacher.float() / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class LogitMSELoss(nn.Module):
    """Mean squared error between logits (Ba & Caruana 2014, "Do Deep Nets Really Need to be
    Deep?", arXiv:1312.6184): MSE = mean_{i,k} (s_ik - t_ik)^2. Temperature does not apply."""

    inputs = "logits"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
        return F.mse_loss(student.float(), teacher.float())


class HintLoss(nn.Module):
    """FitNets hint (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", arXiv:1412.6550).

    HINT = mean_{i,j} (r(u_i)_j - v_i_j)^2, u the student's hint-layer output, v the teacher's
    guided-layer output, r a learned regressor: a 1x1 convolution for (C, H, W) maps (same H, W),
    a linear layer for (C,) vectors. The paper's 1/2 is left to the term's weight. r trains with
    the student but is not part of it: the exported student never holds it.
    """

    inputs = "features"

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        if problem := self.mismatch(student_shape, teacher_shape):
            raise KdxError(f"feature loss 'hint': {problem}")
        (c_s, *rest), c_t = student_shape, teacher_shape[0]
        self.adapter = nn.Conv2d(c_s, c_t, 1, bias=False) if rest else nn.Linear(c_s, c_t)

    @staticmethod
    def mismatch(student_shape: tuple, teacher_shape: tuple) -> str | None:
        """Why the layers' shapes (without the batch axis) cannot be adapted, or None."""
        if len(student_shape) not in (1, 3) or len(student_shape) != len(teacher_shape):
            return (
                f"layer outputs {student_shape} (student) and {teacher_shape} (teacher) must both "
                "be (C, H, W) maps or both (C,) vectors; pick other layers"
            )
        if student_shape[1:] != teacher_shape[1:]:
            return (
                f"spatial sizes differ: {student_shape} (student) vs {teacher_shape} (teacher); "
                "a 1x1 adapter only maps channels, so pick layers with the same H, W"
            )
        return None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
        return F.mse_loss(self.adapter(student.float()), teacher.float())


class AttentionLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention",
    arXiv:1612.03928), activation-based, p = 2:

    q(A) = vec(mean_c A_c^2) / ||vec(mean_c A_c^2)||_2,  AT = mean_{i,j} (q(S_i)_j - q(T_i)_j)^2,
    for (C, H, W) maps of the same H, W (C may differ); no parameters. The authors weight this
    form by beta/2 = 500 (their beta = 10^3).
    """

    inputs = "features"

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        if problem := self.mismatch(student_shape, teacher_shape):
            raise KdxError(f"feature loss 'attention': {problem}")

    @staticmethod
    def mismatch(student_shape: tuple, teacher_shape: tuple) -> str | None:
        """Why the layers' shapes (without the batch axis) cannot be compared, or None."""
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            return (
                f"needs (C, H, W) maps, got {student_shape} and {teacher_shape}; pick conv layers"
            )
        if student_shape[1:] != teacher_shape[1:]:
            return (
                f"spatial sizes differ: {student_shape} (student) vs {teacher_shape} (teacher); "
                "pick layers with the same H, W"
            )
        return None

    @staticmethod
    def attention(a: torch.Tensor) -> torch.Tensor:
        return F.normalize(a.float().pow(2).mean(1).flatten(1), dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
        return (self.attention(student) - self.attention(teacher)).pow(2).mean()


LOSSES: dict[str, type[nn.Module]] = {
    "ce": CELoss,
    "kd": KDLoss,
    "logit_mse": LogitMSELoss,
    "hint": HintLoss,
    "attention": AttentionLoss,
}
LOGIT_LOSSES = ("kd", "logit_mse")
FEATURE_LOSSES = ("none", "hint", "attention")
WEIGHTINGS = ("alpha", "lambda")


def term_weights(
    kd_loss: str, weighting: str, kd_weight: float, feature_loss: str = "none", feature_weight=0.0
) -> dict[str, float]:
    """The recipe's terms and their weights.

    ``alpha``  (the seed's form): L = (1 - w)·CE + w·KD;  ``lambda``: L = CE + w·KD;
    a feature term adds ``feature_weight``·F to either.
    """
    weights = {"ce": 1.0 - kd_weight if weighting == "alpha" else 1.0, kd_loss: kd_weight}
    if feature_loss != "none":
        weights[feature_loss] = feature_weight
    return weights


def make_loss(name: str, temperature: float, feature_shapes: tuple | None) -> nn.Module:
    cls = LOSSES[name]
    if cls is KDLoss:
        return cls(temperature)
    if cls.inputs == "features":
        if feature_shapes is None:
            raise KdxError(f"feature loss '{name}' needs distill.student_layer and teacher_layer")
        return cls(*feature_shapes)
    return cls()


class Objective(nn.Module):
    """The training objective: L = sum_k w_k · loss_k over the terms of non-zero weight.

    Returns the total and each term's value, for the progress display and for naming a
    non-finite term. Feature terms that learn (the hint adapter) are this module's parameters.
    """

    def __init__(
        self,
        weights: dict[str, float],
        temperature: float = 1.0,
        feature_shapes: tuple | None = None,
    ):
        super().__init__()
        self.weights = {k: w for k, w in weights.items() if w}
        self.terms = nn.ModuleDict(
            {k: make_loss(k, temperature, feature_shapes) for k in self.weights}
        )

    def forward(
        self, student, teacher, labels, student_feature=None, teacher_feature=None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        values = {}
        for k, f in self.terms.items():
            if f.inputs == "features":
                values[k] = f(student_feature, teacher_feature, labels)
            else:
                values[k] = f(student, teacher, labels)
        total = sum(self.weights[k] * v for k, v in values.items())
        return total, {k: float(v.detach()) for k, v in values.items()}


def first_non_finite(total: torch.Tensor, terms: dict[str, float]) -> str | None:
    """The name of the first non-finite term (or 'total'), or None when the loss is finite."""
    if math.isfinite(float(total.detach())):
        return None
    return next((k for k, v in terms.items() if not math.isfinite(v)), "total")


class LayerTap:
    """Keeps the latest output of ``model``'s layer ``name`` (from ``named_modules``)."""

    def __init__(self, model: nn.Module, name: str, role: str):
        layers = dict(model.named_modules())
        if not name or name not in layers:
            known = ", ".join(repr(n) for n in layers if n) or "none that can be hooked"
            raise KdxError(
                f"distill.{role}_layer '{name}' is not a layer of the {role}; its layers: {known}"
            )
        self.name, self.value = name, None
        try:
            self._handle = layers[name].register_forward_hook(self._keep)
        except Exception as e:  # TorchScript and exported programs refuse hooks
            raise KdxError(
                f"cannot read layer '{name}' of the {role} ({type(e).__name__}); feature losses need a "
                "PyTorch nn.Module, not TorchScript, torch.export or ONNX"
            ) from None

    def _keep(self, module, inputs, output) -> None:
        self.value = output

    def close(self) -> None:
        """Remove the hook (a teacher is tapped again by every training run that uses it)."""
        self._handle.remove()
