"""Background noise, generated: white, pink (1/f), brown (1/f^2) and mains hum.

Used by the example data set (its ``noise/`` folder and the noisy copies of its clips) and by
``augment`` when no noise clips are given. Each clip has unit RMS so that a caller scales it to a
signal-to-noise ratio with one factor.
"""

from __future__ import annotations

import numpy as np

KINDS = ("white", "pink", "brown", "hum")


def _shaped(samples: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f^exponent, shaped in the frequency domain (the
    DC bin is zeroed, so brown noise does not drift away from zero)."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = np.inf
    return np.fft.irfft(spectrum / f ** (exponent / 2), n=samples)


def _hum(samples: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and its first harmonics with random phases, plus a little hiss."""
    t = np.arange(samples) / sample_rate
    base = rng.choice([50.0, 60.0])
    tones = sum(
        np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 5)
    )
    return tones + 0.05 * rng.standard_normal(samples)


def make_noise(
    kind: str, samples: int, rng: np.random.Generator, sample_rate: int = 16000
) -> np.ndarray:
    """One float32 clip of ``kind`` noise (one of ``KINDS``) with unit RMS."""
    if kind == "hum":
        x = _hum(samples, rng, sample_rate)
    elif kind in ("white", "pink", "brown"):
        x = _shaped(samples, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    else:
        raise ValueError(f"noise kind {kind!r}: one of {KINDS}")
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` scaled so that 10 log10(P_signal / P_noise) = ``snr_db``
    (powers are mean squares over the whole clip; a silent signal gets no noise)."""
    p_signal, p_noise = np.mean(signal**2), np.mean(noise**2)
    if p_signal == 0 or p_noise == 0:
        return signal.copy()
    scale = np.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return (signal + scale * noise).astype(signal.dtype)
