"""Loss values against values computed by hand."""

import math

import pytest
import torch

from kdexport.losses import KDLoss, LogitMSELoss, Objective

S = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
T = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
Y = torch.tensor([0, 1])


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_kd_matches_hand_computation():
    t = 2.0
    expected = (
        t
        * t
        * sum(
            _kl(_softmax(tr, t), _softmax(sr, t))
            for sr, tr in zip(S.tolist(), T.tolist(), strict=True)
        )
        / 2
    )
    assert KDLoss(t)(S, T, Y).item() == pytest.approx(expected, rel=1e-6)
    # Fixed figure: row 1 gives KL(softmax([0, .5]) || softmax([.5, 0])) = 0.1224..., row 2 gives 0.
    assert KDLoss(2.0)(S, T, Y).item() == pytest.approx(4 * 0.12245933 / 2, rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    assert KDLoss(4.0)(T, T, Y).item() == pytest.approx(0.0, abs=1e-7)


def test_logit_mse():
    assert LogitMSELoss()(S, T, Y).item() == pytest.approx((1 + 1 + 0 + 0) / 4)


def test_alpha_and_lambda_weightings():
    ce = torch.nn.functional.cross_entropy(S, Y).item()
    kd = KDLoss(2.0)(S, T, Y).item()
    total, terms = Objective("kd", "alpha", 0.75, 2.0)(S, T, Y)
    assert total.item() == pytest.approx(0.25 * ce + 0.75 * kd, rel=1e-6)
    assert terms == pytest.approx({"ce": ce, "kd": kd})
    total, _ = Objective("kd", "lambda", 3.0, 2.0)(S, T, Y)
    assert total.item() == pytest.approx(ce + 3.0 * kd, rel=1e-6)


def test_pure_ce_skips_the_kd_term():
    total, terms = Objective("kd", "alpha", 0.0, 1.0)(S, torch.zeros(2, 0), Y)
    assert set(terms) == {"ce"}
