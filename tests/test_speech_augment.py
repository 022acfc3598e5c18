"""Waveform augmentation (kdexport.modalities.speech.augment) and generated noise (noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdexport.modalities.speech.augment import (
    add_noise,
    augment,
    generated_noise,
    random_gain,
    time_shift,
)
from kdexport.modalities.speech.noise import KINDS, make_noise, mix_at_snr


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clicks(batch: int = 16, samples: int = 16000) -> torch.Tensor:
    """One impulse in the middle of each clip: where it lands is the shift."""
    x = torch.zeros(batch, samples)
    x[:, samples // 2] = 1.0
    return x


def test_time_shift_moves_each_clip_within_the_limit_and_fills_zeros():
    x = clicks()
    y = time_shift(x, 1600, gen())
    assert y.shape == x.shape
    shifts = y.argmax(1) - 8000
    assert shifts.abs().max() <= 1600 and len(set(shifts.tolist())) > 8  # each clip its own
    assert torch.equal(y.sum(1), torch.ones(16))  # moved, not duplicated
    ramp = torch.arange(1, 101, dtype=torch.float32).repeat(64, 1)
    shifted = time_shift(ramp, 50, gen())
    for row, original in zip(shifted, ramp, strict=True):  # zeros come in, nothing wraps round
        k = int((row == 0).sum())
        assert torch.equal(row[row != 0], original[: 100 - k]) or torch.equal(
            row[row != 0], original[k:]
        )
    assert torch.equal(time_shift(x, 1600, gen(1)), time_shift(x, 1600, gen(1)))


def test_random_gain_stays_in_its_db_range():
    x = torch.randn(64, 1000)
    y = random_gain(x, -6.0, 3.0, gen())
    db = 20 * torch.log10(y.norm(dim=1) / x.norm(dim=1))
    assert db.min() >= -6.0 - 1e-4 and db.max() <= 3.0 + 1e-4 and db.std() > 1


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_is_mixed_at_the_asked_snr(snr):
    t = torch.arange(16000) / 16000
    speech = 0.3 * torch.sin(2 * np.pi * 440 * t).repeat(8, 1)
    noise = torch.randn(3, 24000, generator=gen(5))
    mixed = add_noise(speech, noise, snr, snr, gen())
    measured = 10 * torch.log10(speech.pow(2).mean(1) / (mixed - speech).pow(2).mean(1))
    assert torch.allclose(measured, torch.full((8,), snr), atol=0.01)
    ranged = add_noise(speech, noise, 0.0, 20.0, gen())
    measured = 10 * torch.log10(speech.pow(2).mean(1) / (ranged - speech).pow(2).mean(1))
    assert measured.min() >= -0.01 and measured.max() <= 20.01 and measured.std() > 1


def test_short_noise_repeats_and_silence_stays_silent():
    out = add_noise(torch.zeros(2, 1000), torch.randn(1, 300), 5.0, 5.0, gen())
    assert out.shape == (2, 1000) and not out.any()


def test_generated_noise_has_every_kind_at_unit_rms():
    noise = generated_noise(8, 4000, gen())
    assert noise.shape == (8, 4000) and noise.dtype == torch.float32
    assert torch.allclose(noise.pow(2).mean(1), torch.ones(8), atol=1e-4)
    rng = np.random.default_rng(0)
    spectra = {k: np.abs(np.fft.rfft(make_noise(k, 16000, rng))) ** 2 for k in KINDS}
    low_high = {k: s[1:400].mean() / s[4000:].mean() for k, s in spectra.items()}
    assert low_high["white"] < 2 < low_high["pink"] < low_high["brown"]  # 1/f, 1/f^2
    x = np.ones(100, np.float32)
    mixed = mix_at_snr(x, np.random.default_rng(1).normal(size=100), 10.0)
    assert abs(10 * np.log10(1 / np.mean((mixed - x) ** 2)) - 10) < 1e-3


def test_augment_is_seeded_keeps_shape_and_leaves_its_input_alone():
    x = torch.randn(6, 16000) * 0.1
    before = x.clone()
    a, b = augment(x, gen(3)), augment(x, gen(3))
    assert a.shape == x.shape and torch.equal(a, b) and torch.equal(x, before)
    assert not torch.equal(a, augment(x, gen(4)))
    recorded = torch.randn(2, 20000)
    assert augment(x, gen(3), noise=recorded, noise_prob=1.0).shape == x.shape
