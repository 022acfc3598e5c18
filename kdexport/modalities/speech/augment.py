"""Training-time augmentation of waveform batches (B, samples), in torch, seeded.

Every function draws its randomness from the ``torch.Generator`` it is given, so a training run
seeded once augments the same way every time, and each example of a batch gets its own draw.
The three are Speech Commands' usual recipe (Warden 2018, arXiv:1804.03209: time shift up to
100 ms, background noise mixed in) plus a random gain, since recordings differ in level:

    x = augment(x, generator, noise=noise_clips)    # shift, gain, then noise at 0..20 dB SNR
"""

from __future__ import annotations

import numpy as np
import torch

from kdexport.modalities.speech.noise import KINDS, make_noise


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def time_shift(waves: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each clip moved by a random whole number of samples in [-max_shift, max_shift], the
    samples shifted in being zeros (not wrapped round: a word cut at one end must not reappear
    at the other)."""
    batch, samples = waves.shape
    shift = torch.randint(-max_shift, max_shift + 1, (batch, 1), generator=generator)
    source = torch.arange(samples).unsqueeze(0) - shift  # out[t] = in[t - shift]
    inside = (source >= 0) & (source < samples)
    moved = waves.gather(1, source.clamp(0, samples - 1).to(waves.device))
    return moved * inside.to(waves.device, waves.dtype)


def random_gain(
    waves: torch.Tensor, low_db: float, high_db: float, generator: torch.Generator
) -> torch.Tensor:
    """Each clip scaled by a gain drawn uniformly in [low_db, high_db] dB (not clipped: the
    model's input is float, so a clip louder than full scale is still a valid input)."""
    db = _uniform(waves.shape[0], low_db, high_db, generator)
    return waves * (10 ** (db / 20)).unsqueeze(1).to(waves.device, waves.dtype)


def generated_noise(
    count: int, samples: int, generator: torch.Generator, sample_rate: int = 16000
) -> torch.Tensor:
    """(count, samples) unit-RMS clips of white, pink, brown noise and hum in turn, for when no
    recorded noise is given; numpy draws them from a seed the generator gives."""
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    clips = [make_noise(KINDS[i % len(KINDS)], samples, rng, sample_rate) for i in range(count)]
    return torch.from_numpy(np.stack(clips))


def add_noise(
    waves: torch.Tensor,
    noise: torch.Tensor,
    low_db: float,
    high_db: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each clip plus a random window of a random clip of ``noise`` (N, length >= samples),
    scaled to a signal-to-noise ratio drawn uniformly in [low_db, high_db] dB. Powers are mean
    squares over the whole clip; a silent clip stays silent (no SNR defines its noise)."""
    batch, samples = waves.shape
    if noise.shape[1] < samples:  # a short noise clip repeats (hum and hiss are stationary)
        noise = noise.repeat(1, -(-samples // noise.shape[1]))
    pick = torch.randint(noise.shape[0], (batch,), generator=generator)
    start = torch.randint(noise.shape[1] - samples + 1, (batch,), generator=generator)
    index = start.unsqueeze(1) + torch.arange(samples).unsqueeze(0)
    segments = noise[pick].gather(1, index).to(waves.device, waves.dtype)
    p_signal = waves.pow(2).mean(1, keepdim=True)
    p_noise = segments.pow(2).mean(1, keepdim=True).clamp_min(1e-12)
    snr = _uniform(batch, low_db, high_db, generator).unsqueeze(1).to(waves.device, waves.dtype)
    return waves + segments * torch.sqrt(p_signal / (p_noise * 10 ** (snr / 10)))


def augment(
    waves: torch.Tensor,
    generator: torch.Generator,
    noise: torch.Tensor | None = None,
    sample_rate: int = 16000,
    shift_ms: float = 100.0,
    gain_db: tuple[float, float] = (-6.0, 6.0),
    snr_db: tuple[float, float] = (0.0, 20.0),
    noise_prob: float = 0.8,
) -> torch.Tensor:
    """Shift, gain, then (for a ``noise_prob`` share of the clips) background noise from
    ``noise`` clips, or generated noise when none are given. ``waves`` is not changed."""
    x = time_shift(waves, int(sample_rate * shift_ms / 1000), generator)
    x = random_gain(x, *gain_db, generator)
    if noise is None:
        noise = generated_noise(2 * len(KINDS), x.shape[1], generator, sample_rate)
    noisy = add_noise(x, noise, *snr_db, generator)
    keep = torch.rand(x.shape[0], 1, generator=generator).to(x.device) < noise_prob
    return torch.where(keep, noisy, x)
