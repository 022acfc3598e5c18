"""Loss values against values computed by hand for fixed tensors."""

import math

import pytest
import torch

from kdexport.errors import KdxError
from kdexport.losses import (
    AttentionLoss,
    CELoss,
    HintLoss,
    KDLoss,
    LayerTap,
    LogitMSELoss,
    Objective,
    term_weights,
)

S = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
T = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
Y = torch.tensor([0, 1])
NO_LABELS = torch.tensor([-1, -1])
# KL(softmax([0, .5]) || softmax([.5, 0])) = 0.5 * tanh(0.25) = 0.12245933 (row 1 at T = 2); row 2: 0.
KD_T2 = 4 * 0.12245933 / 2


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_kd_matches_hand_computation():
    t = 2.0
    rows = zip(S.tolist(), T.tolist(), strict=True)
    expected = t * t * sum(_kl(_softmax(tr, t), _softmax(sr, t)) for sr, tr in rows) / 2
    assert KDLoss(t)(S, T, Y).item() == pytest.approx(expected, rel=1e-6)
    # batch mean, times T^2; reduction="mean" would divide by the class count (2) as well
    assert KDLoss(2.0)(S, T, Y).item() == pytest.approx(KD_T2, rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    assert KDLoss(4.0)(T, T, Y).item() == pytest.approx(0.0, abs=1e-7)


def test_logit_mse():
    assert LogitMSELoss()(S, T, Y).item() == pytest.approx((1 + 1 + 0 + 0) / 4)


def test_ce_counts_labeled_samples_only():
    # row 1 alone: -log softmax([1, 0])[0] = log(1 + e^-1) = 0.31326169
    assert CELoss()(S, T, torch.tensor([0, -1])).item() == pytest.approx(0.31326169, rel=1e-6)
    s = S.clone().requires_grad_()
    none = CELoss()(s, T, NO_LABELS)
    assert none.item() == 0.0
    none.backward()  # still part of the graph
    assert s.grad is not None


def test_hint_with_a_fixed_adapter():
    hint = HintLoss((1, 1, 2), (2, 1, 2))
    with torch.no_grad():
        hint.adapter.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
    u = torch.tensor([[1.0, 3.0]]).view(1, 1, 1, 2)  # r(u) = [[2, 6], [-1, -3]]
    v = torch.tensor([[2.0, 5.0], [0.0, -3.0]]).view(1, 2, 1, 2)
    assert hint(u, v, None).item() == pytest.approx((0 + 1 + 1 + 0) / 4)
    assert isinstance(HintLoss((3,), (5,)).adapter, torch.nn.Linear)


def test_attention_transfer():
    s = torch.tensor([[1.0, 0.0], [1.0, 2.0]]).view(1, 2, 1, 2)  # mean_c A^2 = [1, 2]
    t = torch.tensor([[3.0, 0.0]]).view(1, 1, 1, 2)  # mean_c A^2 = [9, 0]
    # q_s = [1, 2]/sqrt(5), q_t = [1, 0]: mean of squares = (2 - 2/sqrt(5)) / 2
    expected = (2 - 2 / math.sqrt(5)) / 2
    assert AttentionLoss((2, 1, 2), (1, 1, 2))(s, t, None).item() == pytest.approx(expected)
    assert AttentionLoss((2, 1, 2), (1, 1, 2))(s, s * 3, None).item() == pytest.approx(
        0.0, abs=1e-7
    )


@pytest.mark.parametrize(
    ("cls", "student", "teacher", "message"),
    [
        (HintLoss, (8, 4, 4), (16, 2, 2), "spatial sizes differ"),
        (HintLoss, (8, 4, 4), (16,), "both be \\(C, H, W\\) maps or both \\(C,\\)"),
        (AttentionLoss, (8,), (16,), "needs \\(C, H, W\\) maps"),
    ],
)
def test_feature_shapes_that_cannot_be_adapted(cls, student, teacher, message):
    with pytest.raises(KdxError, match=message):
        cls(student, teacher)


def test_alpha_and_lambda_weightings():
    ce = torch.nn.functional.cross_entropy(S, Y).item()
    total, terms = Objective(term_weights("kd", "alpha", 0.75), 2.0)(S, T, Y)
    assert total.item() == pytest.approx(0.25 * ce + 0.75 * KD_T2, rel=1e-6)
    assert terms == pytest.approx({"ce": ce, "kd": KD_T2})
    total, _ = Objective(term_weights("kd", "lambda", 3.0), 2.0)(S, T, Y)
    assert total.item() == pytest.approx(ce + 3.0 * KD_T2, rel=1e-6)


def test_kd_keeps_t_squared_without_labels():
    total, terms = Objective(term_weights("kd", "alpha", 0.9), 2.0)(S, T, NO_LABELS)
    assert terms == pytest.approx({"ce": 0.0, "kd": KD_T2})
    assert total.item() == pytest.approx(0.9 * KD_T2, rel=1e-6)


def test_feature_term_is_added_with_its_weight():
    weights = term_weights("logit_mse", "lambda", 1.0, "attention", 500.0)
    assert weights == {"ce": 1.0, "logit_mse": 1.0, "attention": 500.0}
    objective = Objective(weights, 1.0, ((2, 1, 2), (1, 1, 2)))
    fs = torch.tensor([[1.0, 0.0], [1.0, 2.0]]).view(1, 2, 1, 2).repeat(2, 1, 1, 1)
    ft = torch.tensor([[3.0, 0.0]]).view(1, 1, 1, 2).repeat(2, 1, 1, 1)
    total, terms = objective(S, T, Y, fs, ft)
    ce = torch.nn.functional.cross_entropy(S, Y).item()
    at = (2 - 2 / math.sqrt(5)) / 2
    assert total.item() == pytest.approx(ce + 0.5 + 500 * at, rel=1e-6)


def test_pure_ce_skips_the_kd_term():
    total, terms = Objective({"ce": 1.0, "kd": 0.0}, 1.0)(S, torch.zeros(2, 0), Y)
    assert set(terms) == {"ce"}


def test_layer_tap_reads_a_named_layer():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    tap = LayerTap(model, "1", "student")
    model(torch.ones(4, 2))
    assert tap.value.shape == (4, 3)
    tap.close()
    with pytest.raises(
        KdxError, match="'9' is not a layer of the student; its layers: '0', '1', '2'"
    ):
        LayerTap(model, "9", "student")
