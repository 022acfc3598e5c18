"""Distillation losses, looked up by name in ``LOSSES``, and the seed's two weightings.

Every loss maps (student_logits, teacher_logits, labels) to a scalar batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CELoss(nn.Module):
    """Cross-entropy with the labels: CE(y, s) = -mean_i log softmax(s_i)[y_i]."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
        return F.cross_entropy(student, labels)


class KDLoss(nn.Module):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    KD = T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T)),
    a forward KL from the teacher's softened distribution to the student's, summed over classes
    and averaged over the batch ("batchmean": ``reduction="mean"`` would also divide by the class
    count). T^2 keeps the gradient scale independent of T, with or without labels.
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
        t = self.temperature
        log_p_s = F.log_softmax(student / t, dim=1)
        log_p_t = F.log_softmax(teacher / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class LogitMSELoss(nn.Module):
    """Mean squared error between logits (Ba & Caruana 2014, "Do Deep Nets Really Need to be
    Deep?"): MSE = mean_{i,k} (s_ik - t_ik)^2. Temperature does not apply."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
        return F.mse_loss(student, teacher)


LOSSES: dict[str, type[nn.Module]] = {"ce": CELoss, "kd": KDLoss, "logit_mse": LogitMSELoss}

WEIGHTINGS = ("alpha", "lambda")


class Objective(nn.Module):
    """The training objective: a weighted sum of the CE term and one distillation term.

    ``alpha``  (the seed's form): L = (1 - w) * CE(y, s) + w * KD(s, t)
    ``lambda``: L = CE(y, s) + w * KD(s, t)
    Returns the total and each term's value, for the progress display and for naming a
    non-finite term.
    """

    def __init__(self, kd_loss: str, weighting: str, kd_weight: float, temperature: float):
        super().__init__()
        self.terms = nn.ModuleDict(
            {"ce": CELoss(), kd_loss: LOSSES[kd_loss](temperature=temperature)}
        )
        ce_weight = 1.0 - kd_weight if weighting == "alpha" else 1.0
        self.weights = {"ce": ce_weight, kd_loss: kd_weight}

    def forward(self, student, teacher, labels) -> tuple[torch.Tensor, dict[str, float]]:
        terms = {k: f(student, teacher, labels) for k, f in self.terms.items() if self.weights[k]}
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}
