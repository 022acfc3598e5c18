"""Distillation losses, looked up by name in ``LOSSES``, and the objective that weights them.

A loss maps (student, teacher, labels) to a scalar batch mean. Each loss class says what it
reads by its base: a ``LogitTerm`` reads the models' outputs; a ``LayerTerm`` the outputs of one
named intermediate layer of each model (``LayerTap``); a ``ModalityTerm`` what the run's modality
taps (``inputs``: a transformer's ``"hidden_states"`` or ``"attentions"`` and the attention
mask, ``kdexport.modalities.text.features``). Each builds itself (``build``), its taps
(``taps``), checks the models before training (``preflight``) and reads its arguments from the
taps (``term``); ``cache_teacher`` says whether the teacher's outputs can be cached. A label of
-1 (``UNLABELED``) marks a transfer sample without a label: only the teacher's outputs teach on
it.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdexport.errors import KdxError

UNLABELED = -1


class MixedLabels(NamedTuple):
    """The labels of a mixed batch (mixup, cutmix): sample i is ``lam[i]`` of an input labeled
    ``a[i]`` and ``1 - lam[i]`` of one labeled ``b[i]``."""

    a: torch.Tensor
    b: torch.Tensor
    lam: torch.Tensor


class LogitTerm(nn.Module):
    """A loss on the models' outputs (``inputs = "logits"``)."""

    @classmethod
    def build(cls, temperature: float, sizes: tuple | None) -> nn.Module:
        return cls()

    def term(self, student, teacher, labels, student_tap=None, teacher_tap=None) -> torch.Tensor:
        return self(student, teacher, labels)


class LayerTerm(nn.Module):
    """A loss on one named layer of each model (``inputs = "features"``): ``LayerTap``s on
    ``distill.student_layer`` and ``teacher_layer``, whose outputs can be cached."""

    inputs = "features"
    cache_teacher = True

    @classmethod
    def build(cls, temperature: float, sizes: tuple | None) -> nn.Module:
        if sizes is None:
            raise KdxError(
                f"feature loss '{cls.name}' needs distill.student_layer and teacher_layer"
            )
        return cls(*sizes)

    @classmethod
    def taps(cls, student: nn.Module, teacher: nn.Module, opts: dict, modality) -> tuple:
        s_tap = LayerTap(student, opts["student_layer"], "student")
        return s_tap, LayerTap(teacher, opts["teacher_layer"], "teacher")

    @classmethod
    def preflight(cls, teacher, student, opts: dict, x, outputs, modality) -> tuple:
        """Both layers exist and their shapes can be adapted; the shapes (without the batch)."""
        taps = cls.taps(student, teacher, opts, modality)
        for tap, m, role in zip(taps, (student, teacher), ("student", "teacher"), strict=True):
            outputs(m, role, x)
            tap.close()
        shapes = tuple(tuple(t.value.shape[1:]) for t in taps)
        if problem := cls.mismatch(*shapes):
            raise KdxError(f"distill.feature_loss '{cls.name}': {problem}")
        return shapes

    def term(self, student, teacher, labels, student_tap=None, teacher_tap=None) -> torch.Tensor:
        return self(student_tap, teacher_tap, labels)


class ModalityTerm(nn.Module):
    """A loss on what the run's modality taps (``inputs`` names it: a transformer's
    ``"hidden_states"`` or ``"attentions"``): the modality builds the taps and checks that the
    models fit the loss (``Modality.feature_tap``, ``feature_sizes``). The teacher's outputs are
    not cached: every layer of every example would take far too much memory and disk."""

    cache_teacher = False

    @classmethod
    def build(cls, temperature: float, sizes: tuple | None) -> nn.Module:
        if sizes is None:  # the models' sizes and the attention mask are needed
            raise KdxError(
                f"loss '{cls.name}' takes a transformer's {cls.inputs}: build it with the models' "
                "sizes and call it with kdexport.modalities.text.features (see its docstring)"
            )
        return cls(*sizes)

    @classmethod
    def taps(cls, student: nn.Module, teacher: nn.Module, opts: dict, modality) -> tuple:
        return (
            modality.feature_tap(student, cls.inputs, "student"),
            modality.feature_tap(teacher, cls.inputs, "teacher"),
        )

    @classmethod
    def preflight(cls, teacher, student, opts: dict, x, outputs, modality) -> tuple:
        return modality.feature_sizes(teacher, student, opts, x, outputs)

    def term(self, student, teacher, labels, student_tap=None, teacher_tap=None) -> torch.Tensor:
        # teacher and student saw the same trimmed batch: one attention mask
        return self(student_tap.states, teacher_tap.states, labels, student_tap.attention_mask)


class CELoss(LogitTerm):
    """Cross-entropy with the labels: CE(y, s) = -mean_{i labeled} log softmax(s_i)[y_i].

    Averaged over the labeled samples of the batch only; 0 for a batch without any label. A
    mixed batch (``MixedLabels``) mixes the two labels' terms as its inputs were mixed (a sample
    with an unlabeled part counts as unlabeled).
    """

    def forward(self, student: torch.Tensor, teacher, labels) -> torch.Tensor:
        if isinstance(labels, MixedLabels):
            labeled = (labels.a != UNLABELED) & (labels.b != UNLABELED)
            if not bool(labeled.any()):
                return student.sum() * 0.0
            s, lam = student[labeled].float(), labels.lam[labeled]
            a = F.cross_entropy(s, labels.a[labeled], reduction="none")
            b = F.cross_entropy(s, labels.b[labeled], reduction="none")
            return (lam * a + (1 - lam) * b).mean()
        labeled = labels != UNLABELED
        if not bool(labeled.any()):
            return student.sum() * 0.0  # keeps the graph: the other terms may still train
        return F.cross_entropy(student[labeled].float(), labels[labeled])


class KDLoss(LogitTerm):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    KD = T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T)),
    a forward KL from the teacher's softened distribution to the student's, summed over classes
    and averaged over the batch ("batchmean": ``reduction="mean"`` would also divide by the class
    count). T^2 keeps the gradient scale independent of T, with or without labels.
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    @classmethod
    def build(cls, temperature: float, sizes: tuple | None) -> nn.Module:
        return cls(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
        t = self.temperature
        log_p_s = F.log_softmax(student.float() / t, dim=1)
        log_p_t = F.log_softmax(teacher.float() / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class LogitMSELoss(LogitTerm):
    """Mean squared error between logits (Ba & Caruana 2014, "Do Deep Nets Really Need to be
    Deep?", arXiv:1312.6184): MSE = mean_{i,k} (s_ik - t_ik)^2. Temperature does not apply."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
        return F.mse_loss(student.float(), teacher.float())


class HintLoss(LayerTerm):
    """FitNets hint (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", arXiv:1412.6550).

    HINT = mean_{i,j} (r(u_i)_j - v_i_j)^2, u the student's hint-layer output, v the teacher's
    guided-layer output, r a learned regressor: a 1x1 convolution for (C, H, W) maps (same H, W),
    a linear layer for (C,) vectors. The paper's 1/2 is left to the term's weight. r trains with
    the student but is not part of it: the exported student never holds it.
    """

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


class AttentionLoss(LayerTerm):
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention",
    arXiv:1612.03928), activation-based, p = 2:

    q(A) = vec(mean_c A_c^2) / ||vec(mean_c A_c^2)||_2,  AT = mean_{i,j} (q(S_i)_j - q(T_i)_j)^2,
    for (C, H, W) maps of the same H, W (C may differ); no parameters. The authors weight this
    form by beta/2 = 500 (their beta = 10^3).
    """

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


def _token_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) float mask of the real tokens: 1 where ``attention_mask`` is 1, all ones without one."""
    if attention_mask is None:
        return hidden.new_ones(hidden.shape[:2], dtype=torch.float32)
    return attention_mask.to(device=hidden.device, dtype=torch.float32)


class TinyBERTHiddenLoss(ModalityTerm):
    """TinyBERT hidden-state transfer (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural
    Language Understanding", arXiv:1909.10351, eq. 8 with the uniform layer map of sec. 3.1):

    L = sum_{m=0}^{M} mean_{tokens t, dims d} ((H^S_m W)_td - (H^T_{g(m)})_td)^2,  g(m) = m·k,
    k = N / M for a student of M and a teacher of N transformer layers; m = 0 is the embedding
    output (TinyBERT's embedding loss, with the same W, as the authors' code does). W (d_s x
    d_t, learned, no bias) trains with the student but is not part of it: the exported student
    never holds it. The mean runs over real tokens only (``attention_mask`` 1; padding does not
    count, unlike the authors' code), so one sample's loss is the same alone or padded in a batch.

    Inputs: ``student``/``teacher`` are the models' ``hidden_states`` tuples (embeddings, then
    one per layer: M + 1 and N + 1 tensors of (B, L, d)), as ``kdexport.modalities.text.features`` returns.
    """

    inputs = "hidden_states"

    def __init__(
        self, student_hidden: int, teacher_hidden: int, student_layers: int, teacher_layers: int
    ):
        super().__init__()
        if problem := self.mismatch(student_hidden, teacher_hidden, student_layers, teacher_layers):
            raise KdxError(f"loss 'tinybert_hidden': {problem}")
        self.step = teacher_layers // student_layers
        self.layers = student_layers
        self.projection = nn.Linear(student_hidden, teacher_hidden, bias=False)

    @staticmethod
    def sizes(student_config, teacher_config) -> tuple[int, int, int, int]:
        """(d_s, d_t, M, N) from the two models' transformers configs."""
        s, t = student_config, teacher_config
        return s.hidden_size, t.hidden_size, s.num_hidden_layers, t.num_hidden_layers

    @staticmethod
    def mismatch(
        student_hidden: int, teacher_hidden: int, student_layers: int, teacher_layers: int
    ) -> str | None:
        """Why the models' sizes do not fit the loss, or None."""
        if student_layers < 1 or teacher_layers % student_layers:
            return (
                f"the teacher's {teacher_layers} layers do not map onto the student's "
                f"{student_layers} uniformly (g(m) = m·N/M); pick a student whose layer count "
                "divides the teacher's"
            )
        return None

    def layer_map(self) -> list[tuple[int, int]]:
        """(student index, teacher index) into the hidden_states tuples, embeddings first."""
        return [(m, m * self.step) for m in range(self.layers + 1)]

    def forward(self, student, teacher, labels, attention_mask=None) -> torch.Tensor:
        if len(student) != self.layers + 1 or len(teacher) != self.layers * self.step + 1:
            raise KdxError(
                f"loss 'tinybert_hidden' was built for {self.layers} student and "
                f"{self.layers * self.step} teacher layers, got {len(student) - 1} and "
                f"{len(teacher) - 1}; pass the models' whole hidden_states tuples"
            )
        mask = _token_mask(student[0], attention_mask).unsqueeze(-1)
        count = mask.sum() * teacher[0].shape[-1]
        total = student[0].new_zeros((), dtype=torch.float32)
        for m, n in self.layer_map():
            diff = self.projection(student[m].float()) - teacher[n].float()
            total = total + (diff.pow(2) * mask).sum() / count.clamp_min(1.0)
        return total


class MiniLMAttentionLoss(ModalityTerm):
    """MiniLM self-attention distribution transfer of the last layer (Wang et al. 2020, "MiniLM:
    Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
    Transformers", arXiv:2002.10957, eq. 6):

    L = 1 / (A_h |x|) sum_{a=1}^{A_h} sum_{t=1}^{|x|} KL(A^T_{L,a,t} || A^S_{M,a,t}),
    A the softmax attention distributions (query t over keys) of the teacher's last layer L and
    the student's last layer M, A_h heads, |x| the real (unpadded) query positions, then the
    batch mean. Padded keys carry no probability in either model and add nothing. As the paper,
    it needs the same number of heads (and, with one tokenizer, the same sequence); the value-
    relation term of the paper is left out (Hugging Face models do not return the values).
    No parameters: the student's hidden size and depth may differ from the teacher's.

    Inputs: ``student``/``teacher`` are the models' ``attentions`` tuples (one (B, heads, L, L)
    tensor per layer; eager attention), or their last layers' tensors.
    """

    inputs = "attentions"

    def __init__(self, student_heads: int, teacher_heads: int):
        super().__init__()
        if problem := self.mismatch(student_heads, teacher_heads):
            raise KdxError(f"loss 'minilm_attention' {problem}")

    @staticmethod
    def sizes(student_config, teacher_config) -> tuple[int, int]:
        """(student heads, teacher heads) from the two models' transformers configs."""
        return student_config.num_attention_heads, teacher_config.num_attention_heads

    @staticmethod
    def mismatch(student_heads: int, teacher_heads: int) -> str | None:
        """Why the models' sizes do not fit the loss, or None."""
        if student_heads != teacher_heads:
            return (
                f"needs the same number of attention heads (student {student_heads}, teacher "
                f"{teacher_heads}), as MiniLM does; use tinybert_hidden"
            )
        return None

    def forward(self, student, teacher, labels, attention_mask=None) -> torch.Tensor:
        a_s = (student[-1] if isinstance(student, (tuple, list)) else student).float()
        a_t = (teacher[-1] if isinstance(teacher, (tuple, list)) else teacher).float()
        if a_s.shape != a_t.shape:
            raise KdxError(
                f"loss 'minilm_attention': attention maps {tuple(a_s.shape)} (student) and "
                f"{tuple(a_t.shape)} (teacher) differ; same heads and the same tokenized input needed"
            )
        mask = _token_mask(a_s[:, 0, :, 0], attention_mask)  # (B, L)
        keys = mask[:, None, None, :] > 0
        # p log p - p log q over real keys; 0 log 0 = 0 and padded keys are left out
        log_s = torch.where(keys, a_s.clamp_min(1e-30).log(), 0.0)
        log_t = torch.where(keys, a_t.clamp_min(1e-30).log(), 0.0)
        kl = (a_t * (log_t - log_s) * keys).sum(-1)  # (B, heads, queries)
        per_sample = (kl * mask[:, None, :]).sum((1, 2)) / (
            kl.shape[1] * mask.sum(1).clamp_min(1.0)
        )
        return per_sample.mean()


def _named(table: dict[str, type[nn.Module]]) -> dict[str, type[nn.Module]]:
    """The table, each loss told its recipe name (it names itself in its errors)."""
    for name, loss in table.items():
        loss.name = name
    return table


LOSSES = _named(
    {
        "ce": CELoss,
        "kd": KDLoss,
        "logit_mse": LogitMSELoss,
        "hint": HintLoss,
        "attention": AttentionLoss,
        "tinybert_hidden": TinyBERTHiddenLoss,
        "minilm_attention": MiniLMAttentionLoss,
    }
)
# The choices of distill.kd_loss and distill.feature_loss, from what each loss reads.
LOGIT_LOSSES = tuple(n for n, c in LOSSES.items() if issubclass(c, LogitTerm) and n != "ce")
FEATURE_LOSSES = ("none", *(n for n, c in LOSSES.items() if not issubclass(c, LogitTerm)))
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
    """Loss ``name``; ``feature_shapes`` is what pre-flight found for a feature loss: the two
    layers' shapes (a ``LayerTerm``) or the loss's sizes from the models (a ``ModalityTerm``)."""
    return LOSSES[name].build(temperature, feature_shapes)


class Objective(nn.Module):
    """The training objective: L = sum_k w_k · loss_k over the terms of non-zero weight.

    Returns the total and each term's value, for the progress display and for naming a
    non-finite term. Feature terms that learn (the hint adapter, TinyBERT's W) are this
    module's parameters. Image feature terms get the tapped layers' outputs (``LayerTap``); text
    terms get what a ``kdexport.modalities.text.features.TextTap`` holds: the models' hidden states or
    attentions and the batch's attention mask (``.states``, ``.attention_mask``).
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
            values[k] = f.term(student, teacher, labels, student_feature, teacher_feature)
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

    def paused(self) -> contextlib.AbstractContextManager:
        """One layer's output is small: the tap keeps running while validating."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Remove the hook (a teacher is tapped again by every training run that uses it)."""
        self._handle.remove()
